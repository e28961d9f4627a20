"""The CPU speed and memory levers, in one optional place. Each plugs into a seam of the plain
code and is switched by one field of `grpo.config.Levers` (wired in grpo/train/plug.py);
without this package, or with a lever off, the plain path runs with the same results within
float tolerance.

  lean_decode.py   LeanEngine: Llama-family decoding steps as plain tensor ops   (lean_decode)
  few_rows.py      decoding's products with the weight on the left               (few_rows_max)
  native.py        a compiled AVX2 kernel for 6-32-row products, few_rows.c      (native_kernel)
  fused_head.py    log-probs and entropy through the LM head in one autograd op  (fused_head, head_keep_mb)
  heap.py          glibc heap reuse and trimming around each phase               (heap_reuse, heap_trim_every)
  file_weights.py  the frozen reference's weights in a mapped file               (reference_in_file)
"""
