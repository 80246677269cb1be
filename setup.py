"""Build of firkin._core.

Environment switches:
  FIRKIN_DEBUG=1     -O0 -g
  FIRKIN_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (see docs/TESTING.md)
  FIRKIN_WERROR=1    warnings are errors (CI)
"""
import os

import numpy
from setuptools import Extension, setup

SOURCES = ["src/module.c", "src/writer.c", "src/reader.c", "src/codec.c", "src/checksum.c"]

cflags = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
          "-fvisibility=hidden"]
ldflags = ["-pthread"]
if os.environ.get("FIRKIN_DEBUG"):
    cflags += ["-O0", "-g3"]
else:
    cflags += ["-O2"]
if os.environ.get("FIRKIN_SANITIZE"):
    cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    ldflags += ["-fsanitize=address,undefined"]
if os.environ.get("FIRKIN_WERROR"):
    cflags += ["-Werror"]

setup(
    ext_modules=[
        Extension(
            "firkin._core",
            sources=SOURCES,
            depends=["src/firkin.h"],
            include_dirs=[numpy.get_include(), "src"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ],
)
