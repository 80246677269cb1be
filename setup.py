"""Build of firkin._core.

Environment switches:
  FIRKIN_DEBUG=1     -O0 -g
  FIRKIN_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (see docs/TESTING.md)
  FIRKIN_SANITIZE=thread  ThreadSanitizer (the chunk pool's threads; docs/TESTING.md)
  FIRKIN_WERROR=1    warnings are errors (CI)
  FIRKIN_NO_ZSTD=1, FIRKIN_NO_LZ4=1, FIRKIN_NO_LIBDEFLATE=1, FIRKIN_NO_OPENSSL=1
                     build without libzstd / liblz4 / libdeflate / OpenSSL even if present

zlib is required (Debian: zlib1g-dev). zstd and lz4 are linked when their
headers and libraries are found (Debian: libzstd-dev, liblz4-dev), and
libdeflate (libdeflate-dev), a faster engine for the zlib codec. OpenSSL 3's
libcrypto (libssl-dev) gives a faster Poly1305 for the chunks a signature
covers; without it, firkin's portable Poly1305 computes the same values.
"""
import os
import shutil
import sys
import tempfile

import numpy
import setuptools
from setuptools import Extension, setup

if int(setuptools.__version__.split(".")[0]) < 77:
    # pip builds in an isolated environment that has it (pyproject.toml's
    # build-system); a direct `python setup.py ...` uses this environment's
    sys.exit(f"firkin's build needs setuptools >= 77 (its license is an SPDX expression); this environment "
             f"has {setuptools.__version__}: python -m pip install 'setuptools>=77'")

SOURCES = ["src/module.c", "src/container.c", "src/io.c", "src/ring.c", "src/pickler.c", "src/npy.c",
           "src/writer.c", "src/reader.c", "src/codec.c", "src/checksum.c", "src/scan.c", "src/scan_values.c",
           "src/scan_records.c", "src/sign.c", "src/packed.c",
           "src/dtype.c", "src/validate.c", "src/tree.c", "src/filter.c", "src/mapped.c"]

cflags = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
          # the C lint set, clean on every source (errors under FIRKIN_WERROR=1)
          "-Wshadow", "-Wconversion", "-Wpointer-arith", "-Wstrict-prototypes", "-Wformat=2",
          "-fvisibility=hidden"]
ldflags = ["-pthread"]
if os.environ.get("FIRKIN_DEBUG"):
    cflags += ["-O0", "-g3"]
else:
    cflags += ["-O2"]
if os.environ.get("FIRKIN_SANITIZE") == "thread":
    cflags += ["-fsanitize=thread", "-fno-omit-frame-pointer", "-g"]
    ldflags += ["-fsanitize=thread"]
elif os.environ.get("FIRKIN_SANITIZE"):
    cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    ldflags += ["-fsanitize=address,undefined"]
if os.environ.get("FIRKIN_WERROR"):
    cflags += ["-Werror"]


def _links(func, header, lib):
    """Does a tiny program calling `func` from `header` link against -l`lib`?"""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CompileError, LinkError
    from setuptools._distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    tmp = tempfile.mkdtemp(prefix="firkin-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(f"#include <{header}>\nint main(void) {{ (void)&{func}; return 0; }}\n")
        objs = cc.compile([src], output_dir=tmp)
        cc.link_executable(objs, os.path.join(tmp, "probe"), libraries=[lib])
        return True
    except (CompileError, LinkError):
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _project_version():
    """pyproject.toml's version, the one place it is written: the C core
    reports it as firkin.__version__ (FIRKIN_VERSION)."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "pyproject.toml"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("version = "):
                return line.split("=", 1)[1].strip().strip('"')
    sys.exit("pyproject.toml has no version = line under [project]")


libraries = ["z"]
macros = [("FIRKIN_VERSION", '"%s"' % _project_version())]
if not _links("deflate", "zlib.h", "z"):
    sys.exit("firkin needs zlib's headers and library: install zlib1g-dev (Debian/Ubuntu) or zlib-devel")
if not os.environ.get("FIRKIN_NO_LIBDEFLATE") and _links("libdeflate_zlib_compress", "libdeflate.h",
                                                         "deflate"):
    libraries.append("deflate")
    macros.append(("FIRKIN_HAVE_LIBDEFLATE", "1"))
if not os.environ.get("FIRKIN_NO_ZSTD") and _links("ZSTD_compress", "zstd.h", "zstd"):
    libraries.append("zstd")
    macros.append(("FIRKIN_HAVE_ZSTD", "1"))
if not os.environ.get("FIRKIN_NO_LZ4") and _links("LZ4_compress_HC", "lz4hc.h", "lz4"):
    libraries.append("lz4")
    macros.append(("FIRKIN_HAVE_LZ4", "1"))
if not os.environ.get("FIRKIN_NO_OPENSSL") and _links("EVP_MAC_fetch", "openssl/evp.h", "crypto"):
    libraries.append("crypto")
    macros.append(("FIRKIN_HAVE_OPENSSL", "1"))
print("firkin: building with zlib" + "".join(
    ", " + m[0][len("FIRKIN_HAVE_"):].lower() for m in macros if m[0].startswith("FIRKIN_HAVE_")),
    file=sys.stderr)

setup(
    ext_modules=[
        Extension(
            "firkin._core",
            sources=SOURCES,
            depends=["src/firkin.h", "src/container.h", "src/scan.h"],
            include_dirs=[numpy.get_include(), "src"],
            libraries=libraries,
            define_macros=macros,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ],
)
