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
    ])
}

#[test]
fn deploy_configs_validate() {
    for f in ["tollgate.toml", "tollgate-redis.toml", "tollgate-sentinel.toml"] {
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
