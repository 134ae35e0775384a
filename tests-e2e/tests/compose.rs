//! docker-compose.yml cannot be run here (no container engine), so these tests hold it to the
//! code instead: every variable it sets is one a service reads, the ports agree wherever they
//! are named, start-up waits for health, and nginx renders exactly the template's placeholders.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_norway::{Mapping, Value};
use shared::config::{COMMON_ENV, EnvVar};
use shared::http_client::CLIENT_ENV;
use shared::telemetry::TELEMETRY_ENV;

/// The compose services built from this workspace.
const APP_SERVICES: [&str; 3] = ["order", "payment", "stock"];
/// Services that need no healthcheck: nothing waits for them.
const UNCHECKED_SERVICES: [&str; 1] = ["jaeger"];

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn compose() -> Value {
    serde_norway::from_str(&repo_file("docker-compose.yml")).expect("docker-compose.yml is valid YAML")
}

fn services(doc: &Value) -> &Mapping {
    doc.get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has a `services` mapping")
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc.get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

fn service_names(doc: &Value) -> BTreeSet<String> {
    services(doc).keys().map(scalar).collect()
}

/// A scalar as compose sees it: strings as they are, numbers and booleans as written.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// A service's `environment`, in either of compose's forms (mapping, or a list of `KEY=value`).
fn environment(svc: &Value) -> Vec<(String, String)> {
    match svc.get("environment") {
        None => Vec::new(),
        Some(Value::Mapping(map)) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                match item.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (item, String::new()),
                }
            })
            .collect(),
        Some(other) => panic!("`environment` must be a mapping or a list, found {other:?}"),
    }
}

fn env_value(doc: &Value, service_name: &str, var: &str) -> String {
    environment(service(doc, service_name))
        .into_iter()
        .find(|(k, _)| k == var)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("service `{service_name}` does not set {var}"))
}

/// A command or healthcheck test as one line of text, in either form (string or list).
fn text(value: &Value) -> String {
    match value {
        Value::Sequence(items) => items.iter().map(scalar).collect::<Vec<_>>().join(" "),
        other => scalar(other),
    }
}

/// The variables a compose service's binary reads, from the code's own tables.
fn env_read_by(service_name: &str) -> Vec<&'static EnvVar> {
    let own: &[&[EnvVar]] = match service_name {
        "order" => &[CLIENT_ENV, order_service::config::ENV],
        "payment" => &[payment_service::config::ENV],
        "stock" => &[stock_service::config::ENV],
        other => panic!("{other} is not built from this workspace"),
    };
    COMMON_ENV
        .iter()
        .chain(TELEMETRY_ENV)
        .chain(own.iter().flat_map(|t| t.iter()))
        .collect()
}

/// The variable holding a compose service's listening port.
fn port_var(service_name: &str) -> &'static str {
    match service_name {
        "order" => order_service::config::PORT.name,
        "payment" => payment_service::config::PORT.name,
        "stock" => stock_service::config::PORT.name,
        other => panic!("{other} is not built from this workspace"),
    }
}

fn parse_port(text: &str, context: &str) -> u16 {
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{context}: {text:?} is not a port: {e}"))
}

/// `host:port` split in two; `default_port` when the port is left out.
fn host_port(authority: &str, default_port: u16, context: &str) -> (String, u16) {
    match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), parse_port(port, context)),
        None => (authority.to_string(), default_port),
    }
}

/// Host, port and path of the first `http://` URL in `text`.
fn http_url(text: &str, context: &str) -> (String, u16, String) {
    let start = text
        .find("http://")
        .unwrap_or_else(|| panic!("{context}: no http:// URL in {text:?}"));
    let url = text[start + "http://".len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default();
    let (authority, path) = match url.find('/') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, "/"),
    };
    let (host, port) = host_port(authority, 80, context);
    (host, port, path.to_string())
}

fn healthcheck_test(doc: &Value, service_name: &str) -> String {
    let test = service(doc, service_name)
        .get("healthcheck")
        .and_then(|h| h.get("test"))
        .unwrap_or_else(|| panic!("service `{service_name}` has no healthcheck test"));
    text(test)
}

/// `server host:port [params];` entries of an nginx upstream block, as (host, port).
fn upstream_servers(value: &str, context: &str) -> Vec<(String, u16)> {
    value
        .split(';')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let mut words = entry.split_whitespace();
            assert_eq!(
                words.next(),
                Some("server"),
                "{context}: {entry:?} is not a `server` line"
            );
            let address = words
                .next()
                .unwrap_or_else(|| panic!("{context}: {entry:?} names no address"));
            host_port(address, 80, context)
        })
        .collect()
}

/// The `${NAME}` placeholders of an nginx config, comments (`#` outside quotes) left out.
fn placeholders(conf: &str) -> BTreeSet<String> {
    let mut code = String::new();
    for line in conf.lines() {
        let mut quote = None;
        for c in line.chars() {
            match (quote, c) {
                (None, '#') => break,
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), _) if c == q => quote = None,
                _ => {}
            }
            code.push(c);
        }
        code.push('\n');
    }
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').expect("an unclosed ${ in nginx.conf");
        found.insert(after[..end].to_string());
        rest = &after[end + 1..];
    }
    found
}

#[test]
fn compose_defines_redis_the_three_services_and_nginx() {
    let doc = compose();
    let names = service_names(&doc);
    for expected in ["redis", "order", "payment", "stock", "nginx"] {
        assert!(
            names.contains(expected),
            "service `{expected}` missing; found {names:?}"
        );
    }
}

#[test]
fn services_set_only_variables_their_code_reads() {
    let doc = compose();
    for name in APP_SERVICES {
        let known: BTreeSet<&str> = env_read_by(name).iter().map(|v| v.name).collect();
        let unknown: Vec<String> = environment(service(&doc, name))
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !known.contains(k.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "service `{name}` sets {unknown:?}, which its code never reads; it reads {known:?}"
        );
    }
}

#[test]
fn services_listen_on_all_interfaces_and_share_the_compose_redis() {
    let doc = compose();
    let names = service_names(&doc);
    for name in APP_SERVICES {
        assert_eq!(
            env_value(&doc, name, "HOST"),
            "0.0.0.0",
            "`{name}` must listen beyond its loopback"
        );
        let url = env_value(&doc, name, "REDIS_URL");
        let authority = url
            .strip_prefix("redis://")
            .unwrap_or_else(|| panic!("`{name}`'s REDIS_URL {url:?} is not redis://"));
        let (host, port) = host_port(authority.trim_end_matches('/'), 6379, name);
        assert!(
            names.contains(&host),
            "`{name}`'s REDIS_URL names `{host}`, which is no service"
        );
        assert_eq!((host.as_str(), port), ("redis", 6379), "`{name}`'s REDIS_URL");
    }
}

#[test]
fn each_service_port_matches_its_healthcheck_nginx_upstream_and_callers() {
    let doc = compose();
    for name in APP_SERVICES {
        let var = port_var(name);
        let port = parse_port(&env_value(&doc, name, var), &format!("{name}'s {var}"));

        let (_, health_port, health_path) = http_url(&healthcheck_test(&doc, name), &format!("{name}'s healthcheck"));
        assert_eq!(
            health_port, port,
            "`{name}`'s healthcheck probes a port other than {var}"
        );
        assert_eq!(health_path, "/ready", "`{name}`'s healthcheck should ask GET /ready");

        let upstream_var = format!("{}_UPSTREAMS", name.to_uppercase());
        let servers = upstream_servers(&env_value(&doc, "nginx", &upstream_var), &upstream_var);
        assert!(!servers.is_empty(), "nginx's {upstream_var} names no server");
        for (host, upstream_port) in servers {
            assert_eq!(host, name, "nginx's {upstream_var} names host `{host}`");
            assert_eq!(
                upstream_port, port,
                "nginx's {upstream_var} and `{name}`'s {var} disagree"
            );
        }
    }
    for (callee, url_var) in [("stock", "STOCK_URL"), ("payment", "PAYMENT_URL")] {
        let port = parse_port(&env_value(&doc, callee, port_var(callee)), callee);
        let (host, url_port, _) = http_url(&env_value(&doc, "order", url_var), &format!("order's {url_var}"));
        assert_eq!(host, callee, "order's {url_var} should call `{callee}` directly");
        assert_eq!(url_port, port, "order's {url_var} and `{callee}`'s port disagree");
    }
}

#[test]
fn payment_reaches_each_provider_simulator_on_the_port_it_listens_on() {
    let doc = compose();
    let gateways = env_value(&doc, "payment", "PAYMENT_GATEWAYS");
    let list: payment_service::gateways::GatewayList = gateways.parse().expect("PAYMENT_GATEWAYS parses");
    for (name, url) in list.0 {
        assert_eq!(env_value(&doc, &name, "SIM_NAME"), name, "`{name}`'s SIM_NAME");
        let port = parse_port(&env_value(&doc, &name, "SIM_PORT"), &format!("{name}'s SIM_PORT"));
        let (host, url_port, _) = http_url(&url, &format!("payment's {name}"));
        assert_eq!(
            (host.as_str(), url_port),
            (name.as_str(), port),
            "payment's URL for {name}"
        );
        let (_, health_port, health_path) = http_url(&healthcheck_test(&doc, &name), &format!("{name}'s healthcheck"));
        assert_eq!(
            (health_port, health_path.as_str()),
            (port, "/health"),
            "{name}'s healthcheck"
        );
    }
}

#[test]
fn nginx_listens_on_the_port_it_publishes_and_probes() {
    let doc = compose();
    let listen = parse_port(&env_value(&doc, "nginx", "GATEWAY_PORT"), "nginx's GATEWAY_PORT");
    let ports = service(&doc, "nginx")
        .get("ports")
        .and_then(Value::as_sequence)
        .expect("nginx publishes a port");
    let container_ports: Vec<u16> = ports
        .iter()
        .map(|p| {
            let p = scalar(p);
            let container = p.rsplit(':').next().unwrap_or_default();
            parse_port(container.split('/').next().unwrap_or_default(), "nginx's ports")
        })
        .collect();
    assert_eq!(
        container_ports,
        vec![listen],
        "nginx should publish exactly its GATEWAY_PORT"
    );
    let (_, health_port, _) = http_url(&healthcheck_test(&doc, "nginx"), "nginx's healthcheck");
    assert_eq!(
        health_port, listen,
        "nginx's healthcheck probes a port other than GATEWAY_PORT"
    );
}

#[test]
fn every_dependency_exists_and_is_waited_for_until_healthy() {
    let doc = compose();
    let names = service_names(&doc);
    for (name, svc) in services(&doc) {
        let name = scalar(name);
        let Some(depends_on) = svc.get("depends_on") else {
            continue;
        };
        let deps = depends_on
            .as_mapping()
            .unwrap_or_else(|| panic!("`{name}`'s depends_on is a list: use the long form with a condition"));
        for (target, spec) in deps {
            let target = scalar(target);
            assert!(
                names.contains(&target),
                "`{name}` depends on `{target}`, which is no service"
            );
            let condition = spec.get("condition").map(scalar);
            assert_eq!(
                condition.as_deref(),
                Some("service_healthy"),
                "`{name}` should wait for `{target}` to be healthy"
            );
        }
    }
}

#[test]
fn every_service_but_jaeger_has_a_healthcheck() {
    let doc = compose();
    for (name, svc) in services(&doc) {
        let name = scalar(name);
        if UNCHECKED_SERVICES.contains(&name.as_str()) {
            continue;
        }
        let check = svc
            .get("healthcheck")
            .unwrap_or_else(|| panic!("`{name}` has no healthcheck"));
        assert_ne!(
            check.get("disable").map(scalar).as_deref(),
            Some("true"),
            "`{name}` disables its healthcheck"
        );
        let test = check
            .get("test")
            .map(text)
            .unwrap_or_else(|| panic!("`{name}`'s healthcheck has no test"));
        assert!(
            !matches!(test.trim(), "" | "NONE"),
            "`{name}`'s healthcheck test is empty"
        );
    }
}

#[test]
fn redis_logs_every_write_with_appendonly_and_fsync_always() {
    let doc = compose();
    let command = service(&doc, "redis")
        .get("command")
        .map(text)
        .expect("redis has a command");
    let words: Vec<&str> = command.split_whitespace().collect();
    let flag = |name: &str| words.windows(2).find(|w| w[0] == name).map(|w| w[1]);
    assert_eq!(flag("--appendonly"), Some("yes"), "redis command: {command}");
    assert_eq!(flag("--appendfsync"), Some("always"), "redis command: {command}");
}

#[test]
fn nginx_renders_exactly_the_placeholders_of_nginx_conf() {
    let doc = compose();
    let expected = placeholders(&repo_file("nginx.conf"));
    assert!(!expected.is_empty(), "nginx.conf has no ${{...}} placeholders");

    let nginx = service(&doc, "nginx");
    let command = nginx.get("command").map(text).expect("nginx has a command");
    // `$$` is compose's escape for a literal `$`; the shell then sees `${NAME}`.
    let command = command.replace("$$", "$");
    let list_start = command
        .find("envsubst '")
        .unwrap_or_else(|| panic!("nginx's command does not run envsubst with a variable list: {command}"))
        + "envsubst '".len();
    let list_len = command[list_start..]
        .find('\'')
        .expect("envsubst's variable list is not closed");
    let substituted: BTreeSet<String> = command[list_start..list_start + list_len]
        .split_whitespace()
        .map(|word| {
            word.strip_prefix("${")
                .and_then(|w| w.strip_suffix('}'))
                .unwrap_or_else(|| panic!("envsubst list entry {word:?} is not ${{NAME}}"))
                .to_string()
        })
        .collect();
    assert_eq!(
        substituted, expected,
        "envsubst's list and nginx.conf's placeholders differ"
    );

    let provided: BTreeSet<String> = environment(nginx).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        provided, expected,
        "nginx's environment should give a value to each placeholder, and only those"
    );

    // The template envsubst reads is the repository's nginx.conf.
    let volumes = nginx
        .get("volumes")
        .and_then(Value::as_sequence)
        .expect("nginx mounts nginx.conf");
    let template = volumes
        .iter()
        .map(scalar)
        .find_map(|v| {
            let mut parts = v.split(':');
            (parts.next() == Some("./nginx.conf")).then(|| parts.next().unwrap_or_default().to_string())
        })
        .expect("nginx mounts ./nginx.conf");
    assert!(
        command.contains(&format!("< {template}")),
        "nginx's command should render the mounted template {template}: {command}"
    );
    assert!(
        command.contains("> /etc/nginx/nginx.conf"),
        "nginx's command should write /etc/nginx/nginx.conf"
    );
}

#[test]
fn services_export_traces_to_jaegers_otlp_http_port() {
    let doc = compose();
    let jaeger = service(&doc, "jaeger");
    let published: Vec<String> = jaeger
        .get("ports")
        .and_then(Value::as_sequence)
        .expect("jaeger publishes its ports")
        .iter()
        .map(scalar)
        .collect();
    assert!(
        published.iter().any(|p| p.rsplit(':').next() == Some("4318")),
        "jaeger should take OTLP/HTTP on 4318: {published:?}"
    );
    for name in APP_SERVICES {
        let (host, port, _) = http_url(
            &env_value(&doc, name, "OTEL_EXPORTER_OTLP_ENDPOINT"),
            &format!("{name}'s OTEL_EXPORTER_OTLP_ENDPOINT"),
        );
        assert_eq!(
            (host.as_str(), port),
            ("jaeger", 4318),
            "`{name}` should export to jaeger's OTLP/HTTP port"
        );
    }
}
