"""--log-format json: one JSON object per line, every record naming its job and rank, from the
worker's ranks and the operator alike; the final error line stays the one plain line callers parse."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clips import FAST_STYLE, make_clip, stylebatch

from stylebatch.contract import ERROR_PREFIX
from stylebatch.logs import JsonFormat
from stylebatch.progress import PREFIX as PROGRESS_PREFIX

KEYS = {"time", "level", "logger", "message", "job", "rank"}


def records(stderr: str) -> list[dict]:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(PROGRESS_PREFIX)]
    return [json.loads(line) for line in lines if not line.startswith(ERROR_PREFIX)]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 1])  # 1: a lone rank, no mpiexec (its records said rank null)
def test_run_logs_json_lines_from_the_launcher_and_every_rank(workers: int, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=12)
    out = tmp_path / "out.mkv"
    env = {k: v for k, v in os.environ.items() if k != "STYLEBATCH_LOG_FORMAT"}
    result = stylebatch("run", src, "-o", out, "--workers", str(workers), "--chunk-frames", "4", *FAST_STYLE,
                        "--log-format", "json", env=env)
    assert result.returncode == 0, result.stderr
    logged = records(result.stderr)  # every line parses: nothing else is written
    assert logged and all(set(r) == KEYS for r in logged)
    assert {r["job"] for r in logged} == {str(out)}
    ranks = {r["rank"] for r in logged if r["logger"] == "stylebatch.stylize"}
    assert ranks == set(range(workers))
    assert any(r["rank"] is None and "wrote" in r["message"] for r in logged)  # the launcher's own records


def test_the_error_line_stays_one_plain_line_in_json_mode(tmp_path: Path) -> None:
    result = stylebatch("--log-format", "json", "run", tmp_path / "missing.mp4", "-o", tmp_path / "out.mp4")
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        line for line in result.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(result.stderr.splitlines()) == 1 and "not found" in result.stderr


def test_an_unknown_log_format_in_the_environment_is_a_one_line_error(tmp_path: Path) -> None:
    result = stylebatch("styles", env={**os.environ, "STYLEBATCH_LOG_FORMAT": "xml"})
    assert result.returncode == 2 and result.stderr.startswith(ERROR_PREFIX + "bad STYLEBATCH_LOG_FORMAT 'xml'")


def test_operator_records_about_a_job_name_it_and_tracebacks_stay_on_one_line() -> None:
    fmt = JsonFormat()
    about = logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, "created %s", ("Job x",), None)
    about.k8s_ref = {"namespace": "media", "name": "orangutan", "kind": "StyleTransferJob"}
    line = json.loads(fmt.format(about))
    assert (line["job"], line["rank"], line["message"], line["level"]) == ("media/orangutan", None, "created Job x", "info")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("stylebatch_operator", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = fmt.format(failed)
    assert "\n" not in text and "ValueError: boom" in json.loads(text)["exception"]
    assert json.loads(text)["job"] is None


def test_the_operator_in_json_mode_writes_kopfs_records_as_json_naming_the_job(capsys) -> None:
    import kopf

    from stylebatch_operator.main import json_logs

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        kopf.configure(verbose=False)  # what `stylebatch operator` does, then --log-format json
        json_logs()
        body = {"apiVersion": "stylebatch.io/v1alpha1", "kind": "StyleTransferJob",
                "metadata": {"namespace": "media", "name": "orangutan", "uid": "u"}}
        from kopf._core.actions.loggers import ObjectLogger

        ObjectLogger(body=body, settings=kopf.OperatorSettings()).info("Accepted: starting")
        logging.getLogger("stylebatch_operator").info("watching all namespaces")
    finally:
        root.handlers[:], root.level = before, level
        os.environ.pop("STYLEBATCH_LOG_FORMAT", None)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert [(r["job"], r["message"]) for r in lines] == [("media/orangutan", "Accepted: starting"),
                                                         (None, "watching all namespaces")]


def test_the_cli_called_in_process_leaves_the_callers_environment_alone(tmp_path: Path, monkeypatch) -> None:
    """A notebook or service that calls stylebatch in-process keeps its environment: a job name or log
    format chosen by one call must not leak into the next call's ranks (it once named another job)."""
    from stylebatch import logs
    from stylebatch.cli import main

    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    monkeypatch.delenv(logs.LOG_JOB_ENV, raising=False)
    before = dict(os.environ)
    src = make_clip(tmp_path / "in.mp4", frames=2)
    assert main(["run", str(src), "-o", str(tmp_path / "o.mp4"), "--workers", "1", "--log-format", "json",
                 *FAST_STYLE]) == 0
    assert dict(os.environ) == before
    assert logs.child_env() == {logs.FORMAT_ENV: "json", logs.LOG_JOB_ENV: str(tmp_path / "o.mp4")}


_OTHER_LIBRARIES = """
import logging, warnings
from stylebatch import logs
logs.setup({fmt!r})
warnings.warn("Invalid APNG, will use default PNG image if possible")
logging.getLogger("azure.core.pipeline.transport").warning("Incomplete download.\\nretrying")
logging.getLogger("urllib3").info("below WARNING: not shown")
logging.getLogger("stylebatch.x").info("stylebatch's own")
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_other_libraries_warnings_are_one_line_each_in_the_chosen_format(fmt: str) -> None:
    """Pillow's remark on an odd PNG, azure-core's "Incomplete download." (retried): they were printed as
    Python's two-line warning or bare text, lines a user or a log pipeline could not place."""
    result = subprocess.run([sys.executable, "-c", _OTHER_LIBRARIES.format(fmt=fmt)], capture_output=True, text=True,
                            timeout=60, env={k: v for k, v in os.environ.items() if k != "STYLEBATCH_LOG_FORMAT"})
    assert result.returncode == 0, result.stderr
    if fmt == "text":
        assert result.stderr.splitlines() == [
            "stylebatch: warning: UserWarning: Invalid APNG, will use default PNG image if possible",
            "stylebatch: warning: azure.core.pipeline.transport: Incomplete download.",
            "stylebatch: stylebatch's own"], result.stderr
    else:
        got = [(r["level"], r["logger"], r["message"].splitlines()[0]) for r in records(result.stderr)]
        assert got[1:] == [("warning", "azure.core.pipeline.transport", "Incomplete download."),
                           ("info", "stylebatch.x", "stylebatch's own")], result.stderr
        assert got[0][:2] == ("warning", "py.warnings") and "Invalid APNG" in got[0][2], result.stderr


@pytest.mark.parametrize("text", [
    "https://acct.blob.core.windows.net/v/in.mp4?sv=2024-05-04&sig=S3cr3tSig%2Bx%3D",
    "out.mp4&sp=racwdl&sig=S3cr3tSig%2Bx%3D",
    "az://videos/in.mp4%26sp%3Dr%26sig%3DS3cr3tSig%2Bx%3D",
    "<a href=\"https://acct.blob.core.windows.net/v/in.mp4?sv=1&amp;sig=S3cr3tSig%2Bx%3D\">",  # HTML-escaped
    "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=1&sig=S3cr3tSig%2Bx%3D",
    "token;sig=S3cr3tSig%2Bx%3D", "#sig=S3cr3tSig%2Bx%3D", "[sig=S3cr3tSig%2Bx%3D]", "a,sig=S3cr3tSig%2Bx%3D",
    "SIG=S3cr3tSig%2Bx%3D",
])
def test_a_sas_signature_is_hidden_whatever_mark_comes_before_it(text: str) -> None:
    """';sig=', '&amp;sig=' (a URL in HTML or XML), '#sig=', ',sig=' and '[sig=' kept the signature."""
    from stylebatch.logs import hide_signatures

    hidden = hide_signatures(text)
    assert "S3cr3tSig" not in hidden and "REDACTED" in hidden


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_sas_pasted_into_the_output_path_is_hidden_in_every_field_of_every_record(fmt: str, tmp_path: Path) -> None:
    """`-o 'out&sig=...'`: the text lines hid the signature, but every JSON record's "job" (the output)
    showed it, and so did a traceback's "exception"."""
    src = make_clip(tmp_path / "in.mp4", frames=4)
    out = tmp_path / "a&sp=racwdl&sig=S3cr3tSig%2Bx%3D" / "out.mp4"
    out.parent.mkdir()
    result = stylebatch("run", src, "-o", out, "--workers", "1", *FAST_STYLE, "--log-format", fmt)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr and "S3cr3tSig" not in result.stderr
    if fmt == "json":
        assert all(r["job"].startswith(f"{tmp_path}/a&sp=racwdl&sig=REDACTED") for r in records(result.stderr))
    try:
        raise ValueError(f"cannot read {out}?sv=1&sig=S3cr3tSig%2Bx%3D")
    except ValueError:
        failed = logging.LogRecord("kopf.objects", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "S3cr3tSig" not in JsonFormat(str(out)).format(failed)


def test_words_that_end_in_sig_keep_their_text() -> None:
    from stylebatch.logs import hide_signatures

    assert hide_signatures("config=fast; xsig=1") == "config=fast; xsig=1"
