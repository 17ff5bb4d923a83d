"""A GitOps control plane that delivers Istio WasmPlugin declarations to Envoy proxies over xDS."""
