"""The hotcold application: the ``hotcold`` console script (up, demo, key, bench) and the
stack of services it starts. The top layer: it may import everything below it (the
services, ``bench``, the ``hotcold`` library); nothing imports it."""
