"""Download and extraction against a real HTTP server on 127.0.0.1 serving zips built here."""
import http.server
import io
import os
import threading
import zipfile
from pathlib import Path

import pytest

from landmark_core.data.download import ArchiveLimits, download_dataset, download_file, safe_extract
from landmark_core.core.errors import ArchiveError, DataError, DownloadError

from helpers import jpeg_bytes


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload`` with Range support; ``server.drop_after`` bytes then drops the connection once."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        payload: bytes = self.server.payload
        if self.path != "/data.zip":
            self.send_error(404)
            return
        self.server.requests.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(payload) - start))
        self.end_headers()
        body = payload[start:]
        if self.server.drop_after is not None:
            cut, self.server.drop_after = self.server.drop_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection dies mid-file
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.payload, httpd.drop_after, httpd.requests = b"", None, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def url(server):
    return f"http://127.0.0.1:{server.server_address[1]}/data.zip"


def dataset_zip(classes=("00.Haleakala_National_Park", "16.Eiffel_Tower"), per_split=(3, 2)) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split, n in zip(("train", "test"), per_split):
            for c, name in enumerate(classes):
                for i in range(n):
                    archive.writestr(f"landmark_images/{split}/{name}/{i}.jpg", jpeg_bytes(color=(40 * c, 90, 20 * i)))
    return buffer.getvalue()


def test_download_resumes_after_dropped_connection(server, tmp_path):
    server.payload = os.urandom(300_000)
    server.drop_after = 100_000
    seen = []
    path = download_file(url(server), tmp_path / "f.bin", progress=lambda d, t: seen.append((d, t)), backoff=0.01)
    assert path.read_bytes() == server.payload
    assert server.requests[0] is None
    assert server.requests[1] == "bytes=100000-"
    assert seen[-1] == (300_000, 300_000)
    assert not (tmp_path / "f.bin.part").exists()


def test_cancelled_download_keeps_part_and_resumes(server, tmp_path):
    server.payload = os.urandom(200_000)

    def cancel(done, total):
        if done >= 64_000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_file(url(server), tmp_path / "f.bin", progress=cancel, chunk_size=16_000)
    assert (tmp_path / "f.bin.part").stat().st_size == 64_000
    download_file(url(server), tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == server.payload
    assert server.requests[-1] == "bytes=64000-"


def test_missing_file_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(url(server).replace("data.zip", "nope.zip"), tmp_path / "x")


def test_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="resume"):
        download_file("http://127.0.0.1:9/none.zip", tmp_path / "x", retries=1, backoff=0.01, timeout=2)


def test_download_dataset_end_to_end(server, tmp_path):
    server.payload = dataset_zip()
    server.drop_after = len(server.payload) // 2
    root = download_dataset(tmp_path, url=url(server), expected={"classes": 2, "train": 6, "test": 4}, backoff=0.01)
    assert root == tmp_path / "landmark_images" / "landmark_images"
    assert len(list((root / "train").rglob("*.jpg"))) == 6
    assert not (tmp_path / "landmark_images.zip").exists()
    again = download_dataset(tmp_path, url="http://127.0.0.1:9/unused", expected={"classes": 2, "train": 6, "test": 4})
    assert again == root  # already there: no network


def test_wrong_counts_leave_nothing_behind(server, tmp_path):
    server.payload = dataset_zip()
    with pytest.raises(DataError, match="unexpected counts"):
        download_dataset(tmp_path, url=url(server), expected={"classes": 50, "train": 4996, "test": 1250})
    assert not (tmp_path / "landmark_images").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".landmark_images")]


def _zip(entries) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode:
                info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


HOSTILE = {
    "dot-dot": [("../evil.txt", b"x", None)],
    "nested-dot-dot": [("ok/../../evil.txt", b"x", None)],
    "absolute": [("/tmp/evil.txt", b"x", None)],
    "windows-drive": [("C:/evil.txt", b"x", None)],
    "backslash": [("..\\evil.txt", b"x", None)],
    "symlink": [("link", b"/etc/passwd", 0o120777)],
    "bomb-ratio": [("big.bin", b"\0" * (50 << 20), None)],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_archives_are_refused_before_writing(tmp_path, name):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip([("good/0.txt", b"fine", None)] + HOSTILE[name]))
    target = tmp_path / "out"
    with pytest.raises(ArchiveError):
        safe_extract(archive, target)
    assert not target.exists()
    assert not (tmp_path / "evil.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_total_size_limit_and_lying_headers(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip([(f"f{i}.bin", os.urandom(1000), None) for i in range(5)]))
    with pytest.raises(ArchiveError, match="unpack"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=3000))
    assert not (tmp_path / "out").exists()


def test_corrupt_zip_is_refused(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(ArchiveError, match="not a valid zip"):
        safe_extract(tmp_path / "a.zip", tmp_path / "out")


@pytest.mark.slow
def test_import_of_a_user_zip_from_the_cli(tmp_path):
    import subprocess
    import sys
    good, bad = tmp_path / "mine.zip", tmp_path / "evil.zip"
    good.write_bytes(dataset_zip())
    bad.write_bytes(_zip([("photos/0.jpg", jpeg_bytes(), None), ("../../escape.txt", b"x", None)]))
    env = {**os.environ, "LANDMARK_ARTIFACTS": str(tmp_path / "artifacts")}
    run = lambda *args: subprocess.run([sys.executable, "-m", "landmark_core", "data", "import", *map(str, args)],
                                       capture_output=True, text=True, env=env, timeout=120)
    ok = run(good)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().endswith("mine/landmark_images")
    assert "2 classes, 6 train / 4 test" in ok.stderr
    refused = run(bad)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: archive refused")
    assert not (tmp_path / "artifacts" / "data" / "evil").exists()
    assert not (tmp_path / "escape.txt").exists()
    not_photos = tmp_path / "notes.zip"
    not_photos.write_bytes(_zip([("readme.txt", b"hello", None)]))
    assert run(not_photos).returncode == 2
    assert not (tmp_path / "artifacts" / "data" / "notes").exists()
