"""The PEP 517 build backend of the fragless package (in-tree: no requirements, so
`pip install ./python` works offline, with nothing to download).

A wheel holds the Python package and what it runs: libfragless.so, the `fragless` CLI
and the preload library beside it, built here with CMake from the source tree this
folder belongs to (python/ is a folder of the fragless checkout). It is a platform wheel
(one machine's binaries). An editable install (`pip install -e ./python`) builds the same
files into python/fragless/ and points Python at python/.

Needs CMake (3.20+) and a C compiler; without them the build stops with a message naming
what is missing. The version is the C library's (FL_VERSION_STRING in
include/fragless.h): fragless.__version__ and fl_version() agree.
"""
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

NAME = "fragless"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE = os.path.join(HERE, NAME)
# What a wheel carries besides the .py files: (path in the build folder, path in the package).
BUILT = (("libfragless.so", "libfragless.so"),
         ("fragless", "bin/fragless"),
         ("libfragless_preload.so", "bin/libfragless_preload.so"))


class BuildError(RuntimeError):
    pass


def _version():
    header = os.path.join(ROOT, "include", "fragless.h")
    try:
        with open(header) as f:
            m = re.search(r'#define FL_VERSION_STRING "([0-9.]+)"', f.read())
    except OSError as e:
        raise BuildError("fragless: cannot read %s (python/ must stay inside the fragless checkout): %s"
                         % (header, e))
    if not m:
        raise BuildError("fragless: no FL_VERSION_STRING in %s" % header)
    return m.group(1)


def _tag():
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return "py3-none-" + plat


def _metadata(version):
    return ("Metadata-Version: 2.1\nName: %s\nVersion: %s\n"
            "Summary: GPU memory allocator without fragmentation: PyTorch plug-in, statistics "
            "and the fragless CLI\nRequires-Python: >=3.8\n" % (NAME, version))


def _wheel_file():
    return "Wheel-Version: 1.0\nGenerator: fragless_build\nRoot-Is-Purelib: false\nTag: %s\n" % _tag()


ENTRY_POINTS = "[console_scripts]\nfragless = fragless._cli:main\n"


def _cmake_build(build_dir):
    """Builds libfragless.so, the CLI and the preload library with CMake in build_dir."""
    cmake = shutil.which("cmake")
    if not cmake:
        raise BuildError("fragless: building the package needs CMake (3.20 or later) and a C compiler; "
                         "cmake was not found on PATH (Debian: apt-get install cmake gcc)")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise BuildError("fragless: building the package needs a C compiler; none of $CC, cc, gcc, clang "
                         "was found (Debian: apt-get install gcc)")
    configure = [cmake, "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_C_COMPILER=" + cc,
                 "-DFL_SANITIZER_SUITES=OFF"]
    build = [cmake, "--build", build_dir, "-j", str(os.cpu_count() or 2), "--target", "fragless_shared",
             "fragless", "fragless_preload"]
    for cmd in (configure, build):
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        if r.returncode != 0:
            raise BuildError("fragless: %s failed (exit %d):\n%s" % (" ".join(cmd), r.returncode, r.stdout[-4000:]))


def _built_files(build_dir):
    out = []
    for src, dst in BUILT:
        path = os.path.realpath(os.path.join(build_dir, src))  # libfragless.so is a link
        if not os.path.isfile(path):
            raise BuildError("fragless: the build made no %s" % os.path.join(build_dir, src))
        with open(path, "rb") as f:
            out.append(("%s/%s" % (NAME, dst), f.read(), os.stat(path).st_mode & 0o777))
    return out


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (path, digest, len(data))


def _write_wheel(wheel_directory, files):
    version = _version()
    dist_info = "%s-%s.dist-info" % (NAME, version)
    files = list(files) + [(dist_info + "/METADATA", _metadata(version).encode(), 0o644),
                           (dist_info + "/WHEEL", _wheel_file().encode(), 0o644),
                           (dist_info + "/entry_points.txt", ENTRY_POINTS.encode(), 0o644)]
    record = [_record_line(p, d) for p, d, _ in files] + [dist_info + "/RECORD,,"]
    files.append((dist_info + "/RECORD", ("\n".join(record) + "\n").encode(), 0o644))
    filename = "%s-%s-%s.whl" % (NAME, version, _tag())
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as z:
        for path, data, mode in files:
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16  # keeps the CLI executable
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return filename


def _python_files():
    out = []
    for entry in sorted(os.listdir(PACKAGE)):
        if entry.endswith(".py") and entry != "_version.py":
            with open(os.path.join(PACKAGE, entry), "rb") as f:
                out.append(("%s/%s" % (NAME, entry), f.read(), 0o644))
    out.append(("%s/_version.py" % NAME, ('__version__ = "%s"\n' % _version()).encode(), 0o644))
    return out


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with tempfile.TemporaryDirectory(prefix="fragless-build-") as build_dir:
        _cmake_build(build_dir)
        return _write_wheel(wheel_directory, _python_files() + _built_files(build_dir))


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    """The package stays in python/fragless/ (edits take effect at once); the binaries are
    built into it, and a .pth file puts python/ on sys.path."""
    build_dir = os.path.join(ROOT, "build-python")
    _cmake_build(build_dir)
    for path, data, mode in _built_files(build_dir):
        dst = os.path.join(HERE, path)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)
        os.chmod(dst, mode)
    pth = ("__editable__.%s.pth" % NAME, (HERE + "\n").encode(), 0o644)
    return _write_wheel(wheel_directory, [pth])


def _prepare(metadata_directory):
    version = _version()
    dist_info = "%s-%s.dist-info" % (NAME, version)
    os.makedirs(os.path.join(metadata_directory, dist_info), exist_ok=True)
    for name, text in (("METADATA", _metadata(version)), ("WHEEL", _wheel_file()),
                       ("entry_points.txt", ENTRY_POINTS)):
        with open(os.path.join(metadata_directory, dist_info, name), "w") as f:
            f.write(text)
    return dist_info


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    return _prepare(metadata_directory)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    return _prepare(metadata_directory)


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


if __name__ == "__main__":  # python fragless_build.py DIR: build a wheel there
    print(build_wheel(sys.argv[1] if len(sys.argv) > 1 else "."))
