# Bindings for csrc/hypernetwork.c (to be written).
