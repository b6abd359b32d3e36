# Bindings for csrc/output.c (to be written).
