"""The xDS side: immutable snapshots, a cache of them keyed by proxy class, and the ADS servicer.
Nothing here knows where resources come from."""
