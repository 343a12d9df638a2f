"""Wire messages and their JSON/msgpack codecs. Pure: no I/O, fuzzable."""
