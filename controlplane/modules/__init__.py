"""Wasm modules: fetched from where a plugin's url points, verified, kept in a content-addressed cache,
and served to the proxies over HTTP."""
