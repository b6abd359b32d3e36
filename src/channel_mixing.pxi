# Bindings for csrc/channel_mixing.c (to be written).
