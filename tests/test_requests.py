"""The typed requests: one per stage, each field declared once (flag, help, type, check), and what
follows from that: the CLI's flags, validation with one-line errors, and command lines that parse
back to the same request, whether the worker's `run` or the operator wrote them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from clips import error_lines, stylebatch

from stylebatch.cli import build_parser
from stylebatch.errors import BadInput
from stylebatch.fields import flag
from stylebatch.requests import (
    EncodingOptions, ModelOptions, PostprocessRequest, PreprocessRequest, RunRequest, StylizeRequest, TrainRequest,
    parse_argv,
)

REQUESTS = {
    "preprocess, defaults": PreprocessRequest(input="az://v/in.mp4", work="az://v/work/", output="az://v/out.mkv"),
    "preprocess, every encoding flag": PreprocessRequest(
        input="in.mov", work="/tmp/w", output="out.mov",
        encoding=EncodingOptions(codec="hevc", bitrate="8M", preset="slow", chunk_frames=240)),
    "preprocess, names that look like flags": PreprocessRequest(input="-in.mp4", work="-w", output="-o.webm"),
    # a file named like the help flag: to_argv puts it after "--", and from_argv took it for -h
    "preprocess, a file named -h": PreprocessRequest(input="-h", work="--help", output="o.mp4"),
    "run, a file named --help": RunRequest(input="--help", output="out.mp4"),
    "stylize, defaults": StylizeRequest(work="az://v/work/"),
    "stylize, every model flag": StylizeRequest(work="w", model=ModelOptions(
        style="ink-wash:0.3,terracotta:0.7", strength=0.123456789, max_side=720, device="cuda", batch_size=8)),
    "stylize, weights by URI": StylizeRequest(work="w", model=ModelOptions(style="az://s/mosaic.pth", strength=0)),
    "postprocess, deleting the work dir": PostprocessRequest(work="az://v/work/", delete_work=True),
    "postprocess, another output": PostprocessRequest(work="w", output="other.avi"),
    "run, everything": RunRequest(input="in.mp4", output="out.mp4", workers=3, work="w", keep_work=True,
                                  model=ModelOptions(style="3", strength=0.5, max_side=64, device="cpu"),
                                  encoding=EncodingOptions(codec="h264", crf=20, preset="fast", chunk_frames=8)),
    "train-style, defaults": TrainRequest(painting="starry.jpg", output="starry.pth", content=("clip.mp4",)),
    "train-style, blobs and every setting": TrainRequest(
        painting="az://s/starry.jpg", output="az://v/.stylebatch-work/ns/job-1234abcd.pth",
        content=("az://v/in.mp4", "az://v/photos/a.png", "-odd.mp4"), steps=50, size=128, batch_size=2, lr=0.0005,
        style_weight=3, content_weight=0.5, checkpoint_every=10, seed=7, device="cuda"),
    "train-style, no content yet": TrainRequest(painting="p.png", output="p.pth"),
}


@pytest.mark.parametrize("name", REQUESTS)
def test_a_request_and_its_command_line_say_the_same(name: str) -> None:
    req = REQUESTS[name].validate()
    argv = req.to_argv()
    assert argv[0] == req.command
    assert parse_argv(argv) == req
    assert type(req).from_argv(argv) == req
    ns = build_parser().parse_args(argv)  # the CLI a user (or a pod) runs
    assert ns.request.from_namespace(ns) == req


@pytest.mark.parametrize("argv", [["stylize", "--help"], ["run", "in.mp4", "-o", "out.mp4", "-h"],
                                  ["postprocess", "--work", "w", "--help"]])
def test_a_command_line_asking_for_help_is_bad_input_to_the_api_not_an_exit(argv: list[str], capsys) -> None:
    """parse_argv printed the usage and raised SystemExit(0): a program (or the operator) reading a
    user's command line would have ended there, as if it had succeeded."""
    with pytest.raises(BadInput, match=f"(-h|--help).*stylebatch {argv[0]} --help"):
        parse_argv(argv)
    assert capsys.readouterr().out == ""


def test_the_operator_style_argv_reads_as_the_user_would_write_it() -> None:
    req = StylizeRequest(work="az://v/w/", model=ModelOptions(style="ink-wash", strength=0.5, max_side=720))
    assert req.to_argv() == ["stylize", "--work", "az://v/w/", "--style", "ink-wash", "--strength", "0.5",
                             "--device", "auto", "--max-side", "720"]


@pytest.mark.parametrize("make, words", [
    (lambda: ModelOptions(strength=2), ["--strength", "between 0 and 1"]),
    (lambda: ModelOptions(strength="0.5"), ["--strength", "must be a number"]),
    (lambda: ModelOptions(max_side=16), ["--max-side", "at least 32"]),
    (lambda: ModelOptions(device="tpu"), ["--device", "auto, cpu, cuda"]),
    (lambda: ModelOptions(batch_size=0), ["--batch-size", "at least 1"]),
    (lambda: RunRequest(input="a.mp4", output="b.mp4", workers=0), ["--workers", "at least 1"]),
    (lambda: RunRequest(input="a.mp4", output="b.mp4", encoding=EncodingOptions(crf=20, bitrate="4M")),
     ["--crf", "--bitrate", "exclude"]),
    (lambda: RunRequest(input="a.mp4", output="b.avi", encoding=EncodingOptions(codec="vp9")),
     ["--codec vp9", ".avi"]),
    (lambda: RunRequest(input="a.mp4", output="b.mp4", encoding=EncodingOptions(codec="divx")),
     ["unknown --codec", "divx"]),
    (lambda: RunRequest(input="a.mp4", output="b.txt"), ["b.txt", ".mp4"]),
    (lambda: RunRequest(input="a.mp4"), ["--output", "required"]),
    (lambda: PreprocessRequest(input="a.mp4", output="b.mp4"), ["--work", "required"]),
    (lambda: StylizeRequest(work="w", model=ModelOptions(strength=float("nan"))), ["--strength"]),
    (lambda: PostprocessRequest(work="w", output="x.gif"), ["x.gif"]),
    (lambda: TrainRequest(painting="p.jpg", output="p.pth", steps=0), ["--steps", "at least 1"]),
    (lambda: TrainRequest(painting="p.jpg", output="p.pth", size=8), ["--size", "at least 32"]),
    (lambda: TrainRequest(painting="p.jpg", output="p.pth", lr=0), ["--lr", "more than 0"]),
    (lambda: TrainRequest(painting="p.jpg", output="p.pth", content=("a.mp4", 3)), ["--content", "3"]),
    (lambda: TrainRequest(painting="p.jpg", output="p.pth", content="a.mp4"), ["--content", "tuple"]),
    (lambda: TrainRequest(painting="p.jpg"), ["--output", "required"]),
    # refused by `stylebatch train-style` only: the API's request took them
    (lambda: TrainRequest(painting="p.jpg", output="p.jpg"), ["--output", "'p.jpg'", ".pth"]),
    (lambda: TrainRequest(painting="p.jpg", output="az://a/c/holiday.mp4?sig=x"), ["'holiday.mp4'", ".pth"]),
    (lambda: TrainRequest(painting="p.jpg", output="weights"), ["'weights'", ".pth, .pt, .model"]),
    # accepted before, and then: an infinite rate or weight trained to NaN weights; a negative seed
    # was a traceback from numpy once the painting and every content file had been read
    (lambda: TrainRequest(painting="p.jpg", output="p.pth", lr=float("inf")), ["--lr", "finite"]),
    (lambda: TrainRequest(painting="p.jpg", output="p.pth", style_weight=float("inf")), ["--style-weight"]),
    (lambda: TrainRequest(painting="p.jpg", output="p.pth", seed=-1), ["--seed", "between 0 and"]),
    (lambda: TrainRequest(painting="p.jpg", output="p.pth", seed=2**64), ["--seed", "between 0 and"]),
    # an option group that is not one was an AttributeError from validate()
    (lambda: RunRequest(input="a.mp4", output="b.mp4", model={"style": "ink-wash"}), ["model", "ModelOptions"]),
    (lambda: PreprocessRequest(input="a.mp4", work="w", output="b.mp4", encoding=None),
     ["encoding", "EncodingOptions"]),
])
def test_validate_refuses_a_bad_request_naming_the_flag(make, words: list[str]) -> None:
    with pytest.raises(BadInput) as caught:
        make().validate()
    for word in words:
        assert word in str(caught.value)


def test_an_output_with_a_sas_is_judged_by_its_extension_and_the_sas_never_shown() -> None:
    sas = "sv=2024&sp=rwl&sig=S3CR3T"
    RunRequest(input="az://c/in.mp4", output=f"https://a.blob.core.windows.net/c/out.mkv?{sas}").validate()
    with pytest.raises(BadInput) as caught:
        RunRequest(input="az://c/in.mp4", output=f"https://a.blob.core.windows.net/c/out.gif?{sas}").validate()
    assert "out.gif" in str(caught.value) and "S3CR3T" not in str(caught.value)


@pytest.mark.parametrize("make", [
    lambda url: PreprocessRequest(input=url, work=url, output=url),
    lambda url: RunRequest(input=url, output=url, work=url, model=ModelOptions(style=url)),
    lambda url: StylizeRequest(work=url, model=ModelOptions(style=url)),
    lambda url: TrainRequest(painting=url, output=url, content=(url, "local.mp4")),
])
def test_a_requests_repr_shows_its_places_but_never_their_sas(make) -> None:
    """repr() (a log line, a traceback, a scheduler's task view) printed every URL whole, SAS included."""
    url = "https://acct.blob.core.windows.net/c/in.mp4?sv=2024&sp=rwl&sig=S3CR3T"
    req = make(url)
    assert "S3CR3T" not in repr(req) and "sp=rwl" not in repr(req)
    assert "https://acct.blob.core.windows.net/c/in.mp4" in repr(req) and type(req).__name__ in repr(req)
    assert url in req.to_argv()  # the command line a stage runs with still carries it


def test_a_list_or_a_path_where_a_field_wants_a_tuple_or_a_str_is_the_same_frozen_hashable_request() -> None:
    """content=[...] made a request that validate() refused ("must be a tuple") and hash() could not
    take; a pathlib.Path for a place was refused as "must be a str"."""
    from pathlib import Path

    given = TrainRequest(painting=Path("p.jpg"), output=Path("out/p.pth"), content=["a.mp4", Path("photos")])
    meant = TrainRequest(painting="p.jpg", output="out/p.pth", content=("a.mp4", "photos"))
    assert given == meant and hash(given) == hash(meant) and given.validate() == meant
    assert PreprocessRequest(input=Path("in.mp4"), work=Path("w"), output=Path("o.mp4")).validate().to_argv() == [
        "preprocess", "in.mp4", "--work", "w", "-o", "o.mp4"]


@pytest.mark.parametrize("given, meant", [
    (lambda np: ModelOptions(max_side=np.int64(720), batch_size=np.int32(2)),
     ModelOptions(max_side=720, batch_size=2)),
    (lambda np: ModelOptions(strength=np.float32(0.5), temporal_strength=np.float64(0.25)),
     ModelOptions(strength=0.5, temporal_strength=0.25)),
    (lambda np: RunRequest(input="in.mp4", output="o.mp4", workers=np.int64(2), pipelines=np.uint8(1),
                           encoding=EncodingOptions(crf=np.int16(20), chunk_frames=np.int64(48))),
     RunRequest(input="in.mp4", output="o.mp4", workers=2, pipelines=1,
                encoding=EncodingOptions(crf=20, chunk_frames=48))),
])
def test_a_numpy_number_for_a_number_field_is_the_same_request_as_the_plain_number(given, meant) -> None:
    """max_side=np.int64(720) (a size computed with numpy) was refused as "bad --max-side np.int64(720):
    must be a whole number", and np.float32(0.5) as "must be a number"."""
    import numpy as np

    request = given(np)
    assert request == meant and request.validate().to_argv() == meant.to_argv()
    assert [type(value) for value in vars(request).values()] == [type(value) for value in vars(meant).values()]


@pytest.mark.parametrize("argv, words", [
    (["run", "in.mp4", "-o", "out.mp4", "--strength", "2"], ["--strength", "between 0 and 1"]),
    (["run", "in.mp4", "-o", "out.mp4", "--workers", "two"], ["--workers", "not a whole number"]),
    (["run", "in.mp4", "-o", "out.mp4", "--crf", "20", "--bitrate", "4M"], ["--bitrate", "--crf"]),
    (["run", "in.mp4", "-o", "out.webm", "--codec", "h264"], ["--codec h264", ".webm"]),
    (["stylize", "--work", "w", "--device", "tpu"], ["--device", "tpu"]),
    (["postprocess"], ["--work"]),
])
def test_the_cli_refuses_bad_flags_in_one_line_before_any_work(argv: list[str], words: list[str]) -> None:
    result = stylebatch(*argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    for word in words:
        assert word in line


def test_a_new_option_is_one_field_and_reaches_flags_validation_and_argv() -> None:
    @dataclass(frozen=True, kw_only=True)
    class Grainy(StylizeRequest):
        grain: bool = flag("--film-grain", kind=bool, help="add film grain")
        amount: float | None = flag("--grain-amount", kind=float, help="how much",
                                    check=lambda v: None if v < 1 else "must be below 1")

    req = Grainy(work="w", grain=True, amount=0.25)
    assert req.to_argv()[-3:] == ["--film-grain", "--grain-amount", "0.25"]
    assert Grainy.from_argv(req.to_argv()) == req
    with pytest.raises(BadInput, match="--grain-amount"):
        Grainy(work="w", amount=2.0).validate()
    with pytest.raises(BadInput, match="--grain-amount"):
        Grainy.from_argv(["stylize", "--work", "w", "--grain-amount", "3"])


def test_run_derives_each_stage_request_from_its_own() -> None:
    run = REQUESTS["run, everything"]
    assert run.preprocess_request("W") == PreprocessRequest(input="in.mp4", work="W", output="out.mp4",
                                                            encoding=run.encoding)
    # the places as the launcher resolved them (SAS-free addresses for its child stage)
    assert run.preprocess_request("W", "az://v/in.mp4", "az://v/out.mp4") == PreprocessRequest(
        input="az://v/in.mp4", work="W", output="az://v/out.mp4", encoding=run.encoding)
    assert run.stylize_request("W", "/tmp/style.pth") == StylizeRequest(
        work="W", model=ModelOptions(style="/tmp/style.pth", strength=0.5, max_side=64, device="cpu"))
    assert run.postprocess_request("W") == PostprocessRequest(work="W", output="out.mp4")


@pytest.mark.parametrize("make", [
    lambda style: ModelOptions(style=style),
    lambda style: StylizeRequest(work="w", model=ModelOptions(style=style)),
    lambda style: RunRequest(input="a.mp4", output="b.mp4", model=ModelOptions(style=style)),
])
@pytest.mark.parametrize("style", ["", " ", ",", " , "])
def test_an_empty_style_is_refused_by_every_request_and_only_an_absent_one_means_the_default(make, style: str) -> None:
    """style="" was painted as the default, lavender-gold, without a word (`model.style or DEFAULT_STYLE`)."""
    from stylebatch.contract import DEFAULT_STYLE

    with pytest.raises(BadInput) as caught:
        make(style).validate()
    assert f"--style {style!r}" in str(caught.value) and "names no style" in str(caught.value)
    assert ModelOptions().validate().chosen_style == DEFAULT_STYLE
    assert ModelOptions(style="ink-wash").validate().chosen_style == "ink-wash"


@pytest.mark.parametrize("value, words", [
    (2, ["between 0 and 0.95"]),  # said "between 0 and 1", and 1 was refused too
    (1, ["between 0 and 0.95", "1 would freeze the picture"]),
    (0.96, ["between 0 and 0.95"]),
    (-0.1, ["between 0 and 0.95"]),
])
def test_the_temporal_strength_range_is_stated_as_it_is_on_the_command_line_and_in_a_request(value: float,
                                                                                             words: list[str]) -> None:
    from stylebatch.temporal_defaults import MAX_STRENGTH

    assert f"between 0 and {MAX_STRENGTH:g}" == words[0]  # the one constant the message comes from
    with pytest.raises(BadInput) as caught:
        ModelOptions(temporal_strength=value).validate()
    result = stylebatch("run", "in.mp4", "-o", "out.mp4", "--temporal-strength", str(value))
    (line,) = error_lines(result)
    for said in (str(caught.value), line):
        assert "--temporal-strength" in said and all(word in said for word in words), said
    assert "between 0 and 1 " not in line and result.returncode == 2
    assert ModelOptions(temporal_strength=MAX_STRENGTH).validate().temporal_strength == MAX_STRENGTH


@pytest.mark.parametrize("given", [True, 1, "ON"])
def test_a_bad_value_for_a_flag_with_choices_names_the_choices_whatever_its_type(given) -> None:
    """temporal=True said "must be a str": nothing about what it may be."""
    with pytest.raises(BadInput) as caught:
        ModelOptions(temporal=given).validate()
    assert f"bad --temporal {given!r}: must be one of on, off" == str(caught.value)


@pytest.mark.parametrize("argv", [
    ["run", "in.mp4", "-o", "out.mp4", "--max", "64"],  # was read as --max-side 64
    ["run", "in.mp4", "-o", "out.mp4", "--temporal-s", "0.5"],
    ["stylize", "--work", "w", "--sty", "ink-wash"],
])
def test_a_flag_is_only_its_whole_name_never_an_abbreviation(argv: list[str]) -> None:
    """An abbreviation accepted today would change meaning (or become ambiguous) when a flag is added."""
    with pytest.raises(BadInput, match=f"unrecognized arguments: {argv[-2]}"):
        parse_argv(argv)
    (line,) = error_lines(stylebatch(*argv))
    assert f"unrecognized arguments: {argv[-2]}" in line and f"`stylebatch {argv[0]} --help`" in line


@pytest.mark.parametrize("make", [
    lambda out: RunRequest(input="a.mp4", output=out),
    lambda out: PreprocessRequest(input="a.mp4", work="w", output=out),
    lambda out: PostprocessRequest(work="w", output=out),
])
@pytest.mark.parametrize("output, shown", [
    ("az://videos/", "az://videos/"),  # said "output '' needs one of the extensions"
    ("az://videos/out/", "az://videos/out/"),
    ("https://acct.blob.core.windows.net/videos/?sv=2024&sig=S3CR3T", "https://acct.blob.core.windows.net/videos/"),
    ("out/", "out/"),
])
def test_an_output_ending_in_a_slash_is_a_folder_and_the_message_asks_for_a_file_name(make, output: str,
                                                                                     shown: str) -> None:
    """A blob prefix was judged by its last folder's name: the container, for https://acct/videos/."""
    with pytest.raises(BadInput) as caught:
        make(output).validate()
    said = str(caught.value)
    assert f"--output {shown!r}" in said and "names a folder" in said and f"e.g. {shown}out.mp4" in said
    assert "S3CR3T" not in said and "extensions" not in said


AZURITE = "http://127.0.0.1:10000/devstoreaccount1/videos"


@pytest.mark.parametrize("make", [
    lambda out: RunRequest(input="a.mp4", output=out.replace("EXT", "mp4")),
    lambda out: PreprocessRequest(input="a.mp4", work="w", output=out.replace("EXT", "mkv")),
    lambda out: PostprocessRequest(work="w", output=out.replace("EXT", "webm")),
    lambda out: TrainRequest(painting="p.jpg", output=out.replace("EXT", "pth")),
])
@pytest.mark.parametrize("output", [
    "az://videos/out/ü #1 100%.EXT",  # '#' and '%' are part of an az:// name: was refused as 'ü '
    "az://videos/out/take#2.EXT",
    f"{AZURITE}/in%2EEXT",  # the blob 'in.<ext>': was refused, the extension read before percent-decoding
    f"{AZURITE}/a%20b%23c.EXT",  # the blob 'a b#c.<ext>'
])
def test_an_output_is_judged_by_the_name_that_will_be_written(make, output: str) -> None:
    """The extension was read from urlsplit's path: in az:// a '#' starts no fragment, and a blob URL's
    name is percent-decoded before it is a name. Accepted: validate() gets past the extension check
    (no storage is touched)."""
    make(output).validate()


@pytest.mark.parametrize("output, name", [
    ("az://videos/out/ü #1 100%.gif", "ü #1 100%.gif"),
    (f"{AZURITE}/in%2Egif", "in.gif"),
    (f"{AZURITE}/clip.mp4%3F.gif", "clip.mp4?.gif"),
])
def test_an_output_without_a_video_extension_is_refused_naming_it_as_it_would_be_written(output: str,
                                                                                         name: str) -> None:
    """No storage is touched: the CLI refuses it in one line, naming the whole name (was 'ü ', or 'in%2Egif')."""
    result = stylebatch("run", "in.mp4", "-o", output)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = error_lines(result)
    assert f"output {name!r} needs one of the extensions" in line, line


_SAS_URL = "https://acct.blob.core.windows.net/c/in.mp4?sv=2024&sp=rwl&sig=S3CR3T"


@pytest.mark.parametrize("make", [
    lambda: parse_argv(["run", _SAS_URL, "-o", "out.mp4", _SAS_URL]),  # two inputs: "unrecognized arguments"
    lambda: parse_argv(["postprocess", "--work", "w", _SAS_URL]),  # -o left out
    lambda: parse_argv(["run", "in.mp4", "-o", "out.mp4", "--max-side", _SAS_URL]),
    lambda: ModelOptions(device=_SAS_URL).validate(),
    lambda: EncodingOptions(preset=_SAS_URL).settings("out.mp4"),
])
def test_a_bad_input_message_never_holds_the_sas_of_a_url_given_where_none_goes(make) -> None:
    """The API's BadInput quoted the URL whole, SAS included (the CLI's error line hid it; a caller
    logging the exception did not)."""
    with pytest.raises(BadInput) as caught:
        make()
    assert "S3CR3T" not in str(caught.value) and "sig=REDACTED" in str(caught.value)
