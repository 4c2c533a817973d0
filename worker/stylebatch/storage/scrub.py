"""Text safe to print: one line, no control characters, and no SAS signature in urllib3's log."""

from __future__ import annotations

import logging
import re

from stylebatch.contract import file_part, is_az
from stylebatch.logs import hide_signatures

_SAS_SIGNATURE = re.compile(r"((?:^|[?&\s])sig=)[^&\s\"']+")
def printable(text: str) -> str:
    """Escape control characters (and undecodable bytes) so a path always prints on one line; a SAS
    signature in it (a token pasted where no query string goes) is hidden."""
    text = hide_signatures(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(text: str) -> str:
    return " ".join(text.split())


def scrub_uri(uri: str) -> str:
    """The URI without its query, fragment or user info: safe to print even when it is malformed. In
    az:// a '#' is a character of the blob's name (as storage.location reads it), not a fragment: the
    name is shown whole (contract.file_part)."""
    head = file_part(uri) if is_az(uri) else re.split(r"[?#]", uri, maxsplit=1)[0]
    head = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", head)
    return printable(head)


class _RedactSasSignature(logging.Filter):
    """urllib3 logs every request line at DEBUG, query string included: blank out a SAS signature."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "sig=" in message:
            record.msg, record.args = _SAS_SIGNATURE.sub(r"\1REDACTED", message), None
        return True


_URLLIB3_LOG = logging.getLogger("urllib3.connectionpool")
if not any(isinstance(f, _RedactSasSignature) for f in _URLLIB3_LOG.filters):
    _URLLIB3_LOG.addFilter(_RedactSasSignature())
