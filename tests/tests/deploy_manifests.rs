//! The deploy bundle renders with kustomize and is accepted by a real kube-apiserver
//! (`kubectl apply --dry-run=server`), on what a 1.20 server supports.

use std::{path::Path, process::Command, time::Duration};

use podmeter_tests::{control_plane::ControlPlane, run, run_with_input, serial};

fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn kustomize(dir: &Path) -> String {
    let mut kubectl = Command::new("kubectl");
    kubectl.arg("kustomize").arg(dir);
    let out = run(kubectl, Duration::from_secs(30)).expect("kubectl kustomize");
    assert!(out.success(), "kustomize {}: {}", dir.display(), out.stderr);
    out.stdout
}

#[test]
fn the_bundle_renders_and_the_api_server_accepts_it() {
    let _serial = serial();
    let deploy = deploy_dir();
    // One command installs it: the base needs no certificate step (the metrics API makes its
    // own and sets the APIServices' caBundle).
    let rendered = kustomize(&deploy.join("base"));
    for kind in [
        "kind: DaemonSet",
        "kind: Deployment",
        "kind: APIService",
        "name: v1beta2.custom.metrics.k8s.io",
        "name: system:auth-delegator",
        "- extension-apiserver-authentication",
        // The agents' API: TLS + audience-bound token + `get nodes/podmeter`.
        "- --api-auth=token-review",
        "- --token-audience=podmeter-agent",
        "audience: podmeter-agent",
        "expirationSeconds: 600",
        "- nodes/podmeter",
        "- subjectaccessreviews",
        // Its certificate Secret and APIServices.
        "- podmeter-metrics-api-certs",
        "- apiservices",
    ] {
        assert!(rendered.contains(kind), "{kind} missing from:\n{rendered}");
    }
    // The cert-manager overlay renders too (its CRDs are not on the test server).
    let cert_manager = kustomize(&deploy.join("overlays/cert-manager"));
    for wanted in [
        "cert-manager.io/inject-ca-from: podmeter-system/podmeter-metrics-api",
        "- --tls-cert-file=/etc/podmeter/tls/tls.crt",
        "secretName: podmeter-metrics-api-tls",
    ] {
        assert!(
            cert_manager.contains(wanted),
            "{wanted} missing from:\n{cert_manager}"
        );
    }
    assert!(!rendered.contains("caBundle"), "the base sets no caBundle");

    let control_plane = ControlPlane::start().expect("control plane");
    // The namespace first: a server-side dry run does not create it for the namespaced objects.
    let namespace =
        std::fs::read_to_string(deploy.join("base/namespace.yaml")).expect("namespace.yaml");
    control_plane.apply(&namespace).expect("namespace");
    let dry_run = |yaml: &str| {
        let mut kubectl = Command::new("kubectl");
        kubectl
            .args(["--kubeconfig"])
            .arg(control_plane.kubeconfig())
            .args(["apply", "--dry-run=server", "-f", "-"]);
        let out = run_with_input(kubectl, yaml.as_bytes(), Duration::from_secs(60))
            .expect("kubectl apply");
        assert!(
            out.success(),
            "server dry run rejected:\n{}\n{}",
            out.stderr,
            yaml
        );
        out.stdout
    };
    let accepted = dry_run(&rendered);
    for object in [
        "daemonset.apps/podmeter-agent",
        "deployment.apps/podmeter-metrics-api",
        "apiservice.apiregistration.k8s.io/v1beta1.custom.metrics.k8s.io",
        "clusterrolebinding.rbac.authorization.k8s.io/podmeter-metrics-api:system:auth-delegator",
        "clusterrolebinding.rbac.authorization.k8s.io/podmeter-agent-reader",
        "role.rbac.authorization.k8s.io/podmeter-metrics-api-certs",
    ] {
        assert!(
            accepted.contains(object),
            "{object} not accepted:\n{accepted}"
        );
    }
    // The example HPAs are autoscaling/v2 (GA in 1.23); their Pods metric spec is the same in
    // v2beta2, which this 1.20 server serves.
    for (file, last) in [
        ("examples/hpa-reference.yaml", "backend-2"),
        ("examples/hpa-latency.yaml", "backend-3"),
        ("examples/hpa-concurrency.yaml", "backend-4"),
    ] {
        let hpas = std::fs::read_to_string(deploy.join(file)).expect("hpa example");
        let accepted = dry_run(&hpas.replace("autoscaling/v2\n", "autoscaling/v2beta2\n"));
        assert!(
            accepted.contains(&format!("horizontalpodautoscaler.autoscaling/{last}")),
            "{file}: {accepted}"
        );
    }
}
