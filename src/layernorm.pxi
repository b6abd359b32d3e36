# Bindings for csrc/layernorm.c (to be written).
