"""The xDS side: immutable snapshots, a cache of them keyed by proxy class, and the discovery services
(ADS and ECDS, state of the world and delta). Nothing here knows where resources come from."""
