"""Checks what schema validation cannot: that the rendered manifests of an
overlay carry the properties docs/deploy.md promises.

    kubectl kustomize deploy/k8s/overlays/prod | python3 deploy/k8s/check.py prod
"""
import sys

import yaml


def main() -> int:
    overlay = sys.argv[1]
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    errors = []

    def need(cond, what):
        if not cond:
            errors.append(what)

    (sts,) = by_kind["StatefulSet"]
    (cm,) = by_kind["ConfigMap"]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    need(spec["podManagementPolicy"] == "Parallel", "Parallel pod management")
    need(spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data", "volumeClaimTemplates 'data'")
    need(
        any(m["name"] == "data" and m["mountPath"] == cm["data"]["FERROLOG_DATA_DIR"] for m in c["volumeMounts"]),
        "data volume mounted at FERROLOG_DATA_DIR",
    )
    headless = [s for s in by_kind["Service"] if s["spec"].get("clusterIP") == "None"]
    need(len(headless) == 1 and headless[0]["metadata"]["name"] == spec["serviceName"], "headless Service = serviceName")
    need(headless and headless[0]["spec"].get("publishNotReadyAddresses") is True, "publishNotReadyAddresses")
    need(any(s["spec"].get("type") == "ClusterIP" for s in by_kind["Service"]), "a client Service")
    env = {e["name"]: e for e in c.get("env", [])}
    need(env.get("FERROLOG_POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
         "FERROLOG_POD_NAME from the pod name")
    need(spec["serviceName"] in env.get("FERROLOG_PEER_DOMAIN", {}).get("value", ""), "peer domain is the headless Service")
    initial = int(cm["data"]["FERROLOG_STATEFULSET_INITIAL_BROKERS"])
    need(initial == spec["replicas"], f"initial brokers {initial} = replicas {spec['replicas']} at creation")
    psc, csc = pod["securityContext"], c["securityContext"]
    need(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "pod runs as non-root")
    need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
    need(csc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
    need(csc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    need(csc.get("capabilities", {}).get("drop") == ["ALL"], "all capabilities dropped")
    need(pod.get("automountServiceAccountToken") is False, "no service account token")
    need(cm["data"].get("FERROLOG_LOG_FORMAT") == "json", "JSON logs")
    for p in ("startupProbe", "readinessProbe", "livenessProbe"):
        need(p in c, p)
    need(c.get("readinessProbe", {}).get("grpc", {}).get("service") == "ferrolog.ready", "readiness = caught up")
    need(c.get("livenessProbe", {}).get("grpc", {}).get("service") == "ferrolog.live", "liveness = process answers")
    need("requests" in c.get("resources", {}) and "limits" in c.get("resources", {}), "resource requests and limits")
    need(pod.get("terminationGracePeriodSeconds", 30) >= 30, "grace period for leadership hand-off")
    ann = spec["template"]["metadata"].get("annotations", {})
    need(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "9644", "Prometheus annotations")
    (pdb,) = by_kind["PodDisruptionBudget"]
    need(pdb["spec"].get("maxUnavailable") == 1, "PDB maxUnavailable 1")
    if overlay == "dev":
        need(spec["replicas"] == 3, "dev: 3 brokers")
    if overlay == "prod":
        need(spec["replicas"] == 5, "prod: 5 brokers")
        anti = pod.get("affinity", {}).get("podAntiAffinity", {})
        need(anti.get("requiredDuringSchedulingIgnoredDuringExecution"), "prod: pod anti-affinity")
        need(any(t["topologyKey"] == "topology.kubernetes.io/zone" for t in pod.get("topologySpreadConstraints", [])),
             "prod: spread across zones")
    for e in errors:
        print(f"{overlay}: missing: {e}", file=sys.stderr)
    print(f"{overlay}: {len(docs)} objects, {'FAILED' if errors else 'all properties present'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
