# Bindings for csrc/embeddings.c (to be written).
