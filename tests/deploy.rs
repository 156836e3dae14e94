//! The deployment artifacts stay in step with the code: their configs validate, and every
//! metric their alerts and dashboard query exists.

use std::collections::HashSet;
use std::path::Path;

use tollgate::config::Config;
use tollgate::observe::metrics::Metrics;
use tollgate::store::embedded::EmbeddedStore;
use tollgate::upstream::circuit::State;

fn deploy(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)).unwrap()
}

fn env() -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([
        ("RUNBLOB_TOKEN".to_string(), "t".to_string()),
        ("REDIS_PASSWORD".to_string(), "pw".to_string()),
        ("TOLLGATE_ADMIN_TOKEN".to_string(), "an-admin-token-0123456789abcdef-0123".to_string()),
    ])
}

#[test]
fn deploy_configs_validate() {
    for f in [
        "tollgate.toml",
        "tollgate-redis.toml",
        "tollgate-sentinel.toml",
        "compose/tollgate-redis.toml",
        "compose/tollgate-sentinel.toml",
    ] {
        Config::from_toml(&deploy(f), &env()).unwrap_or_else(|e| panic!("deploy/{f}: {e}"));
    }
    // The TOML embedded in the Kubernetes ConfigMaps.
    for f in ["k8s/config.yaml", "k8s/sidecar.yaml"] {
        let cm = deploy(f);
        let start = cm.find("tollgate.toml: |\n").unwrap() + "tollgate.toml: |\n".len();
        let end = cm[start..].find("\n---").map(|e| start + e).unwrap_or(cm.len());
        let toml: String =
            cm[start..end].lines().map(|l| l.strip_prefix("    ").unwrap_or(l)).collect::<Vec<_>>().join("\n");
        let c = Config::from_toml(&toml, &env()).unwrap_or_else(|e| panic!("{f} ConfigMap: {e}"));
        assert!(matches!(c.store, tollgate::config::StoreConfig::Redis { .. }), "{f}");
    }
    // No placeholder secrets: applying a file must never overwrite a real token.
    for f in [
        "k8s/config.yaml",
        "k8s/sidecar.yaml",
        "k8s/redis.yaml",
        "k8s/edge.yaml",
        "docker-compose.yml",
        "docker-compose-sentinel.yml",
    ] {
        let text = deploy(f);
        assert!(
            !text.contains("kind: Secret") && !text.contains("replace-me") && !text.contains("change-me"),
            "{f} holds a placeholder secret"
        );
    }
    // Compose publishes on loopback only and needs an admin token.
    for f in ["docker-compose.yml", "docker-compose-sentinel.yml"] {
        let compose = deploy(f);
        assert!(
            compose
                .lines()
                .filter(|l| l.trim_start().starts_with("ports:"))
                .all(|l| !l.contains("\"80") && !l.contains("\"90")),
            "{f}"
        );
        assert!(compose.contains("${TOLLGATE_ADMIN_TOKEN:?"), "{f}");
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&compose).unwrap_or_else(|e| panic!("{f} is not YAML: {e}"));
    }
    // The sidecar's ports stay inside the pod, and it runs as a native sidecar.
    let sidecar = deploy("k8s/sidecar.yaml");
    assert!(sidecar.contains("listen = \"127.0.0.1:8080\"") && sidecar.contains("restartPolicy: Always"));
}

#[tokio::test]
async fn alerts_and_dashboard_query_metrics_that_exist() {
    let text = Metrics::new().render(&EmbeddedStore::memory(), State::Closed).await;
    let known: HashSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .flat_map(|base| ["", "_total", "_bucket", "_sum", "_count"].map(|s| format!("{base}{s}")))
        .collect();
    let dashboard = deploy("grafana/tollgate-dashboard.json");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("dashboard is JSON");
    let mut checked = 0;
    for source in [deploy("prometheus/alerts.yml"), dashboard] {
        let mut rest = source.as_str();
        while let Some(i) = rest.find("tollgate_") {
            let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            assert!(known.contains(&name), "{name} is queried but not exported; exported: {known:?}");
            checked += 1;
            rest = &rest[i + name.len()..];
        }
    }
    assert!(checked > 15, "{checked}");
}

/// A `${VAR:-default}` or `${VAR:?message}` of a compose file, as the container would see it
/// (the default, or a value the operator was made to give).
fn compose_value(v: &str) -> String {
    match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        Some(inner) => match inner.split_once(":-") {
            Some((_, default)) => default.to_string(),
            None => "an-operator-given-value-0123456789abcdef".to_string(),
        },
        None => v.to_string(),
    }
}

/// Before: the compose gateways ran a shell `sed` over a config still holding the example keys
/// (both exited 64), and the README's `docker run` mounted a config without the `models.toml`
/// it names. Each gateway service's config is now loaded as its container would load it (the
/// file it mounts, the environment it sets) and `run` would start it.
#[test]
fn the_container_configs_start_as_their_containers_would_run_them() {
    for f in ["docker-compose.yml", "docker-compose-sentinel.yml"] {
        let mut compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(&deploy(f)).unwrap();
        // `tollgate-2: { <<: *tollgate }` as compose reads it.
        compose.apply_merge().unwrap();
        let mut gateways = 0;
        for (name, svc) in compose["services"].as_mapping().unwrap() {
            let command: Vec<&str> =
                svc["command"].as_sequence().into_iter().flatten().filter_map(|v| v.as_str()).collect();
            if command.first() != Some(&"run") {
                continue;
            }
            gateways += 1;
            assert!(svc.get("entrypoint").is_none(), "{f} {name:?}: no shell entrypoint");
            let config = command[command.iter().position(|c| *c == "--config").unwrap() + 1];
            let mount = svc["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str())
                .find_map(|v| v.strip_suffix(":ro").unwrap_or(v).split_once(':').filter(|(_, c)| *c == config))
                .unwrap_or_else(|| panic!("{f} {name:?} mounts no {config}"));
            let env: std::collections::HashMap<String, String> = svc["environment"]
                .as_mapping()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.as_str().unwrap().to_string(), compose_value(v.as_str().unwrap())))
                .collect();
            let text = deploy(mount.0.trim_start_matches("./"));
            let c = Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("{f} {name:?} ({}): {e}", mount.0));
            assert!(c.run_refusals().is_empty(), "{f} {name:?}: run refuses {:?}", c.run_refusals());
            assert!(c.upstream.base_url.to_string().starts_with("http://platform:8000"), "{f}: the simulated platform");
        }
        assert_eq!(gateways, 2, "{f}");
    }
    // The README's docker run: the image's own config, with the environment it passes.
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let run = readme.split("docker run").nth(1).unwrap().split("\n```").next().unwrap().to_string();
    let env: std::collections::HashMap<String, String> = run
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "-e")
        .map(|w| (w[1].to_string(), "an-operator-given-value-0123456789abcdef".to_string()))
        .collect();
    assert!(env.contains_key("RUNBLOB_TOKEN") && env.contains_key("TOLLGATE_ADMIN_TOKEN"), "{run}");
    assert!(!run.contains(":/etc/tollgate/tollgate.toml"), "the image's own config is used: {run}");
    let dockerfile = deploy("Dockerfile");
    assert!(dockerfile.contains("COPY deploy/tollgate.toml /etc/tollgate/tollgate.toml"));
    let c = Config::from_toml(&deploy("tollgate.toml"), &env).unwrap_or_else(|e| panic!("the image's config: {e}"));
    assert!(c.run_refusals().is_empty() && c.server.listen.ip().is_unspecified());
}
