# Bindings for csrc/attention.c (to be written).
