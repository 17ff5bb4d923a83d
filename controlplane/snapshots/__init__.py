"""Between translation and the xDS server: what each proxy class is served, as an immutable snapshot."""
