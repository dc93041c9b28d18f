"""The state of RPM repositories: repomd.xml (or the metalink's record of it),
fetched, verified against the pinned keys and kept for offline builds.

A repository's state is the sha256 of its repomd.xml; its date is the newest
``timestamp`` in repomd.xml (or the metalink's ``mm0:timestamp``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import BuildError

REPOMD = "repodata/repomd.xml"
TIMEOUT = 60            # seconds, for connecting and for each read
NS_REPO = "{http://linux.duke.edu/metadata/repo}"
NS_METALINK = "{http://www.metalinker.org/}"
NS_MM0 = "{http://fedorahosted.org/mirrormanager}"


@dataclass(frozen=True)
class RepoMeta:
    """One repository's verified metadata identity."""

    url: str          # where it came from (repomd.xml, metalink or mirrorlist URL)
    sha256: str       # of repomd.xml
    timestamp: int    # newest metadata date, seconds since the epoch


def _xml(data: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise BuildError("repository", f"{what} is not valid XML: {exc}",
                         hint="is the URL an RPM repository (does it have "
                              "repodata/repomd.xml)?") from None


def parse_repomd(data: bytes, what: str) -> int:
    """The newest ``timestamp`` of the records in repomd.xml *data*."""
    root = _xml(data, what)
    if root.tag != f"{NS_REPO}repomd":
        raise BuildError("repository", f"{what} is not a repomd.xml document "
                                       f"(root element {root.tag})")
    stamps = [int(float(t.text)) for t in root.iter(f"{NS_REPO}timestamp")
              if t.text and t.text.strip()]
    if not stamps:
        rev = root.findtext(f"{NS_REPO}revision") or ""
        if rev.strip().isdigit():
            return int(rev)
        raise BuildError("repository", f"{what} has no timestamp and no numeric revision")
    return max(stamps)


def parse_metalink(data: bytes, what: str) -> tuple[str, int]:
    """(sha256, timestamp) of repomd.xml as the metalink records them."""
    root = _xml(data, what)
    for f in root.iter(f"{NS_METALINK}file"):
        if f.get("name") != "repomd.xml":
            continue
        ts = f.findtext(f"{NS_MM0}timestamp")
        sha = None
        for h in f.iter(f"{NS_METALINK}hash"):
            if h.get("type") == "sha256" and h.text:
                sha = h.text.strip().lower()
                break
        if sha and ts and ts.strip().isdigit():
            return sha, int(ts)
    raise BuildError("repository", f"{what} names no repomd.xml with a sha256 hash and "
                                   "a timestamp", hint="is the URL a metalink?")


def parse_mirrorlist(text: str) -> list[str]:
    """Mirror base URLs of a mirrorlist (comments and blank lines skipped)."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


class MetaFetcher:
    """Downloads small metadata files, keeping a copy in *store* so that an
    offline build can use the copy of the last online one.

    The standard library's urllib (redirects and the *_proxy environment
    variables as usual) is enough for a few small files and imports in a
    third of the time of requests, which every build would pay for."""

    def __init__(self, store: Path, *, offline: bool) -> None:
        self.store = store
        self.offline = offline

    def _local(self, url: str) -> Path:
        return self.store / hashlib.sha256(url.encode()).hexdigest()[:32]

    def get(self, url: str, *, missing_ok: bool = False) -> bytes | None:
        local = self._local(url)
        if self.offline:
            if local.is_file():
                return local.read_bytes()
            if missing_ok and local.with_suffix(".absent").exists():
                return None
            raise BuildError("repository", f"{url} is not in the package cache",
                             hint="build once without --offline to fill the cache")
        status, data = _http_get(url)
        if status == 404 and missing_ok:
            self.store.mkdir(parents=True, exist_ok=True)
            local.with_suffix(".absent").touch()
            return None
        if status != 200:
            raise BuildError("repository", f"cannot fetch {url}: HTTP {status}",
                             hint="is the repository URL right?")
        self._keep(local, data)
        local.with_suffix(".absent").unlink(missing_ok=True)
        return data

    def _keep(self, local: Path, data: bytes) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.store, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, local)

    def close(self) -> None:
        return None


def _http_get(url: str) -> tuple[int, bytes]:
    """(HTTP status, body) of GET *url*; BuildError when there is no answer."""
    import http.client
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, headers={"User-Agent": "vzpkg"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, b""
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError too
        from vzpkg.core.neterrors import describe
        raise BuildError("repository", f"cannot fetch {url}: {describe(exc)}",
                         hint="is the repository up and the URL right? check "
                              "the template's mirrors (override with --set "
                              "mirrors.NAME=URL)") from None


def verify_signature(data: bytes, sig: bytes, keyring: Path, what: str) -> None:
    """gpgv the detached signature *sig* over *data* with exactly *keyring*."""
    with tempfile.TemporaryDirectory(prefix="vzpkg-repomd-") as d:
        (Path(d) / "data").write_bytes(data)
        (Path(d) / "data.asc").write_bytes(sig)
        r = subprocess.run(["gpgv", "--keyring", str(keyring), f"{d}/data.asc", f"{d}/data"],
                           capture_output=True, text=True, check=False)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        raise BuildError("repository", f"the signature of {what} does not verify with the "
                                       f"template's pinned keys: {' / '.join(lines[-3:])}",
                         hint="check the keys: entries of the template; a build never "
                              "proceeds with unverified repository metadata")


def repo_meta(fetch: MetaFetcher, *, url: str | None, metalink: str | None,
              mirrorlist: str | None, keyring: Path, signed: bool) -> RepoMeta:
    """Fetch and check one repository's metadata identity."""
    if metalink:
        data = fetch.get(metalink)
        assert data is not None
        sha, ts = parse_metalink(data, metalink)
        return RepoMeta(url=metalink, sha256=sha, timestamp=ts)
    if url:
        base = url
    else:
        assert mirrorlist
        raw = fetch.get(mirrorlist)
        assert raw is not None
        mirrors = parse_mirrorlist(raw.decode("utf-8", "replace"))
        if not mirrors:
            raise BuildError("repository", f"the mirrorlist {mirrorlist} lists no mirror")
        base = mirrors[0]
    where = base.rstrip("/") + "/" + REPOMD
    data = fetch.get(where)
    assert data is not None
    if signed:
        sig = fetch.get(where + ".asc", missing_ok=True)
        if sig is None:
            raise BuildError("repository", f"{where} has no signature (repomd.xml.asc)",
                             hint="the repository does not sign its metadata; set the "
                                  "template variable repo_gpgcheck: 0 only if the "
                                  "distribution never signs it (packages stay checked)")
        verify_signature(data, sig, keyring, where)
    return RepoMeta(url=where, sha256=hashlib.sha256(data).hexdigest(),
                    timestamp=parse_repomd(data, where))
