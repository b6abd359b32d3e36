# Bindings for csrc/token_mixing.c (to be written).
