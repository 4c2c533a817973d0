"""Storage URIs as the operator handles them: the derived work dir, and URIs and messages made safe
to show (a URI may carry a SAS token in its query string; status, events and logs never show it)."""

from __future__ import annotations

import posixpath
import re
from urllib.parse import urlsplit, urlunsplit

from stylebatch.contract import WORK_DIR_NAME, is_az


def strip_secrets(uri: str) -> str:
    """The URI without its query string (where Azure puts SAS tokens) and without user:password@. In
    az:// a '#' is a character of the blob's name (as the worker's storage.location reads it), not a
    fragment: the name is kept whole (an upload `a#b.mp4` made pods read and write `a`)."""
    if "://" not in uri or is_az(uri):
        return uri.split("?", 1)[0]
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def work_dir(output: str, namespace: str, name: str, uid: str) -> str:
    """Next to the output: <output's folder>/.stylebatch-work/<namespace>/<name>-<uid[:8]>/.

    The uid keeps a re-created job with the same name from resuming its predecessor's parts. Never a
    query string: the pods take SAS tokens from the storage Secret, not from their arguments.
    """
    leaf = f"{WORK_DIR_NAME}/{namespace}/{name}-{uid[:8]}/"
    base = strip_secrets(output)
    if "://" not in base or is_az(base):  # (az://: a '#' is part of a folder's name)
        return posixpath.join(posixpath.dirname(base), leaf)
    parts = urlsplit(base)
    folder = posixpath.dirname(parts.path)
    return urlunsplit((parts.scheme, parts.netloc, posixpath.join(folder if folder else "/", leaf), "", ""))


# Fields of a StyleTransferJob's spec holding URIs, whose query string may carry a SAS token.
URI_FIELDS = ("input", "output", "style", "workDir")
SAS_GOES_IN_THE_SECRET = ("give the URL without it: credentials go in the storage Secret (keys AZURE_STORAGE_ACCOUNT "
                          "and AZURE_STORAGE_SAS_TOKEN, named by spec.storage.secretName), which reaches the pods "
                          "as environment variables")


def sas_problem(field: str, uri: str) -> str | None:
    """Why a spec URI cannot be used: a query string (where Azure puts SAS tokens) would put a secret
    in the job's spec and its pods' arguments, which anyone who may list them can read. The CRD
    refuses the same (crd.SPEC_SCHEMA's rule on each of URI_FIELDS and on spec.train.content[]); this
    catches what the API server did not check (a job created before the rule)."""
    if "?" not in uri:
        return None
    return f"spec.{field} {strip_secrets(uri)!r} carries a query string (a SAS token?): {SAS_GOES_IN_THE_SECRET}"


_URI_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?'\"]*)\?[^\s'\"]*")
_SECRET_PAIR = re.compile(r"\b(AccountKey|SharedAccessSignature|SharedAccessKey|sig|se|sv|sp)=[^;&\s'\"]+",
                          re.IGNORECASE)


def redact(text: str) -> str:
    """A message from a child (a Job condition, a pod's last log lines) made safe for status and events."""
    from stylebatch.logs import hide_signatures

    text = hide_signatures(_URI_QUERY.sub(r"\1?<redacted>", text))  # (also a signature percent-encoded)
    return _SECRET_PAIR.sub(r"\1=<redacted>", text)
