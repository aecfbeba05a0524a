"""A minimal PEP 517 build backend for the pure-Python fragless package: writes a wheel
(a zip with the package and its dist-info) using only the standard library, so that
installing needs no network and no build tools."""
import base64
import hashlib
import os
import zipfile

NAME, VERSION = "fragless", "0.1.0"
HERE = os.path.dirname(os.path.abspath(__file__))
DIST_INFO = "%s-%s.dist-info" % (NAME, VERSION)

METADATA = ("Metadata-Version: 2.1\nName: %s\nVersion: %s\n"
            "Summary: GPU memory allocator without fragmentation: PyTorch plug-in and statistics\n"
            "Requires-Python: >=3.8\n" % (NAME, VERSION))
WHEEL = "Wheel-Version: 1.0\nGenerator: fragless_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (path, digest, len(data))


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    filename = "%s-%s-py3-none-any.whl" % (NAME, VERSION)
    files = []
    for entry in sorted(os.listdir(os.path.join(HERE, NAME))):
        if entry.endswith(".py"):
            with open(os.path.join(HERE, NAME, entry), "rb") as f:
                files.append(("%s/%s" % (NAME, entry), f.read()))
    files.append((DIST_INFO + "/METADATA", METADATA.encode()))
    files.append((DIST_INFO + "/WHEEL", WHEEL.encode()))
    record = [_record_line(p, d) for p, d in files] + [DIST_INFO + "/RECORD,,"]
    files.append((DIST_INFO + "/RECORD", ("\n".join(record) + "\n").encode()))
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files:
            z.writestr(path, data)
    return filename


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    os.makedirs(os.path.join(metadata_directory, DIST_INFO), exist_ok=True)
    for name, text in (("METADATA", METADATA), ("WHEEL", WHEEL)):
        with open(os.path.join(metadata_directory, DIST_INFO, name), "w") as f:
            f.write(text)
    return DIST_INFO
