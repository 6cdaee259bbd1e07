"""Convert a Hugging Face checkpoint to a GGUF with llama.cpp's own converter (benchmarks only).

    python gguf_convert.py LLAMA_CPP_SRC MODEL_DIR OUT.gguf

LLAMA_CPP_SRC is llama.cpp's source tree (the llama-cpp-python sdist vendors it under
vendor/llama.cpp). Two of the converter's checks are bypassed for Demi's random-weight stand-ins:
their tokenizer is not one whose pre-tokenizer hash the converter knows (it is told "qwen2", the
family's own), and Qwen2's converter tries sentencepiece before the BPE vocabulary the stand-in has.
Neither touches the weights, which is all a speed comparison reads.
"""

import sys

src, model_dir, out = sys.argv[1:4]
sys.path[:0] = [src, f"{src}/gguf-py"]
import conversion.base as base  # noqa: E402
import conversion.qwen as qwen  # noqa: E402

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
qwen.Qwen2Model.set_vocab = lambda self: self._set_vocab_gpt2()
import convert_hf_to_gguf  # noqa: E402

sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", "f16", "--outfile", out]
convert_hf_to_gguf.main()
