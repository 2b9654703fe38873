//! docker-compose.yml, the Dockerfile and .env.example, checked by parsing them: no container
//! engine runs on the machines that test Sluice, so this is the deployment's safety net.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod dockerfile;
mod interpolation;

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Compose {
    #[allow(dead_code)]
    name: String,
    services: BTreeMap<String, Service>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<yaml_serde::Value>>,
    #[serde(default)]
    networks: BTreeMap<String, Option<yaml_serde::Value>>,
}

/// The parts of a service these checks read. `depends_on` must use the long form, so every
/// dependency states its condition.
#[derive(Debug, Deserialize)]
struct Service {
    image: Option<String>,
    build: Option<Build>,
    container_name: Option<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    profiles: Vec<String>,
    #[serde(default)]
    command: Vec<String>,
    restart: Option<String>,
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    depends_on: BTreeMap<String, Dependency>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, Option<String>>,
    deploy: Option<yaml_serde::Value>,
    networks: Option<yaml_serde::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Build {
    context: String,
    dockerfile: String,
    target: String,
}

#[derive(Debug, Deserialize)]
struct Healthcheck {
    #[serde(default)]
    test: Vec<String>,
    #[serde(default)]
    disable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dependency {
    condition: String,
    #[serde(default = "yes")]
    required: bool,
}

fn yes() -> bool {
    true
}

const EXPECTED: [&str; 10] = [
    "postgres",
    "redis",
    "rabbitmq",
    "migrate",
    "api-1",
    "api-2",
    "worker",
    "mock-gemini",
    "hysteria",
    "nginx",
];
/// Services that run to completion (no health check: they are waited for by exit status).
const ONE_SHOT: [&str; 1] = ["migrate"];
/// The Sluice processes: no fixed name or host port, so they can be replicated and scaled.
const REPLICATED: [&str; 3] = ["api-1", "api-2", "worker"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The compose file with its YAML merge keys (`<<: *anchor`) applied, as Compose does.
fn compose() -> Compose {
    let mut value: yaml_serde::Value =
        yaml_serde::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    // One pass resolves one level: an anchor that merges another (x-migrate-env merges
    // x-api-env, which merges x-sluice-env) needs one pass per level, as Compose resolves them.
    for _ in 0..3 {
        value.apply_merge().expect("merge keys apply");
    }
    // Extension fields (`x-…`) only hold anchors; Compose ignores them.
    if let Some(map) = value.as_mapping_mut() {
        map.retain(|key, _| !key.as_str().is_some_and(|k| k.starts_with("x-")));
    }
    yaml_serde::from_value(value).expect("docker-compose.yml has the expected shape")
}

/// Names assigned (`NAME=…`, not commented out) in .env.example.
fn env_example_assignments() -> BTreeSet<String> {
    read(".env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(name, _)| name.trim().to_owned()))
        .collect()
}

#[test]
fn every_expected_service_exists_and_no_other() {
    let compose = compose();
    let names: BTreeSet<&str> = compose.services.keys().map(String::as_str).collect();
    assert_eq!(names, EXPECTED.into_iter().collect::<BTreeSet<_>>());
    for (name, service) in &compose.services {
        assert!(
            service.image.is_some() || service.build.is_some(),
            "{name}: neither image nor build"
        );
    }
    assert_eq!(compose.services["mock-gemini"].profiles, ["dev"]);
    assert_eq!(compose.services["hysteria"].profiles, ["egress"]);
    for name in EXPECTED
        .iter()
        .filter(|n| !["mock-gemini", "hysteria"].contains(n))
    {
        assert!(
            compose.services[*name].profiles.is_empty(),
            "{name} must start without a profile"
        );
    }
}

#[test]
fn every_long_running_service_has_a_health_check() {
    for (name, service) in &compose().services {
        let check = service.healthcheck.as_ref();
        if ONE_SHOT.contains(&name.as_str()) {
            assert_eq!(service.restart.as_deref(), Some("no"), "{name} runs once");
            continue;
        }
        let check = check.unwrap_or_else(|| panic!("{name} has no healthcheck"));
        assert!(!check.disable, "{name}: healthcheck disabled");
        assert!(
            matches!(
                check.test.first().map(String::as_str),
                Some("CMD" | "CMD-SHELL")
            ) && check.test.len() > 1,
            "{name}: healthcheck test {:?}",
            check.test
        );
        assert!(
            service.restart.as_deref() == Some("unless-stopped"),
            "{name} restarts"
        );
    }
    let probe = |name: &str| {
        compose().services[name]
            .healthcheck
            .as_ref()
            .unwrap()
            .test
            .join(" ")
    };
    assert!(probe("api-1").contains("http://127.0.0.1:8080/api/ready"));
    assert!(probe("worker").contains("http://127.0.0.1:8081/health"));
}

#[test]
fn dependencies_wait_for_the_right_condition() {
    let compose = compose();
    let conditions = [
        "service_started",
        "service_healthy",
        "service_completed_successfully",
    ];
    for (name, service) in &compose.services {
        for (target, dependency) in &service.depends_on {
            assert!(
                compose.services.contains_key(target),
                "{name} depends on unknown {target}"
            );
            assert!(
                conditions.contains(&dependency.condition.as_str()),
                "{name} → {target}: condition {}",
                dependency.condition
            );
            // Waiting on a service's health needs that service to have one.
            if dependency.condition == "service_healthy" {
                assert!(
                    compose.services[target]
                        .healthcheck
                        .as_ref()
                        .is_some_and(|h| !h.disable),
                    "{name} waits for {target}'s health, which it does not report"
                );
            }
            // A dependency outside the default profile must be optional, or plain
            // `docker compose up` refuses to start.
            if !compose.services[target].profiles.is_empty() {
                assert!(
                    !dependency.required,
                    "{name} → {target} (profile only) needs required: false"
                );
            }
        }
    }
    let wants = |name: &str, target: &str, condition: &str| {
        let dependency = compose.services[name]
            .depends_on
            .get(target)
            .unwrap_or_else(|| panic!("{name} does not depend on {target}"));
        assert_eq!(dependency.condition, condition, "{name} → {target}");
    };
    for api in ["api-1", "api-2"] {
        wants(api, "migrate", "service_completed_successfully");
        wants(api, "postgres", "service_healthy");
        wants(api, "redis", "service_healthy");
        wants(api, "rabbitmq", "service_healthy");
    }
    wants("worker", "migrate", "service_completed_successfully");
    wants("worker", "redis", "service_healthy");
    wants("worker", "rabbitmq", "service_healthy");
    wants("worker", "hysteria", "service_healthy");
    wants("migrate", "postgres", "service_healthy");
    wants("migrate", "rabbitmq", "service_healthy");
    wants("nginx", "api-1", "service_healthy");
    wants("nginx", "api-2", "service_healthy");
    assert_eq!(compose.services["migrate"].command, ["migrate"]);
}

#[test]
fn data_lives_in_declared_named_volumes() {
    let compose = compose();
    for (name, service) in &compose.services {
        for volume in &service.volumes {
            let source = volume.split(':').next().unwrap_or_default();
            let is_path =
                source.starts_with('.') || source.starts_with('/') || source.starts_with('$');
            if is_path {
                // Bind mounts of files in this repository must point at something real.
                if source.starts_with("./") {
                    assert!(root().join(source).exists(), "{name}: {source} is missing");
                }
            } else {
                assert!(
                    compose.volumes.contains_key(source),
                    "{name}: volume {source} is not declared"
                );
            }
        }
    }
    let mounts = |name: &str| compose.services[name].volumes.join(" ");
    assert!(mounts("postgres").contains("pgdata:/var/lib/postgresql/data"));
    assert!(mounts("redis").contains("redisdata:/data"));
    assert!(mounts("rabbitmq").contains("rabbitdata:/var/lib/rabbitmq"));
    // RabbitMQ boots with the definitions (topology and users), as rabbitmq.conf says.
    assert!(mounts("rabbitmq").contains("./rabbitmq/rabbitmq.conf:/etc/rabbitmq/rabbitmq.conf"));
    assert!(
        mounts("rabbitmq").contains("./rabbitmq/definitions.json:/etc/rabbitmq/definitions.json")
    );
    assert!(
        read("rabbitmq/rabbitmq.conf")
            .contains("definitions.local.path = /etc/rabbitmq/definitions.json")
    );
    assert!(read("rabbitmq/enabled_plugins").contains("rabbitmq_management"));
    assert!(compose.networks.contains_key("sluice"));
}

#[test]
fn sluice_processes_have_no_fixed_name_or_host_port() {
    let compose = compose();
    for name in REPLICATED {
        let service = &compose.services[name];
        assert_eq!(service.container_name, None, "{name} has a container_name");
        assert!(
            service.ports.is_empty(),
            "{name} publishes {:?}",
            service.ports
        );
        assert!(
            service.deploy.is_none(),
            "{name}: scale with --scale, not deploy"
        );
    }
    // Nothing but nginx and the operators' RabbitMQ UI (on loopback) reaches the host.
    for (name, service) in &compose.services {
        assert_eq!(service.container_name, None, "{name} has a container_name");
        match name.as_str() {
            "nginx" | "rabbitmq" => {}
            _ => assert!(
                service.ports.is_empty(),
                "{name} publishes {:?}",
                service.ports
            ),
        }
    }
    let ui = &compose.services["rabbitmq"].ports;
    assert!(
        ui.len() == 1 && ui[0].starts_with("127.0.0.1:"),
        "UI ports {ui:?}"
    );
    // The workers' egress is the Hysteria2 client when the proxy is set.
    assert!(read(".env.example").contains("SLUICE__PROVIDER__PROXY=socks5h://hysteria:1080"));
}

#[test]
fn nginx_publishes_what_the_readme_says_and_renders_its_template() {
    let compose = compose();
    let nginx = &compose.services["nginx"];
    let env = |key: &str| {
        nginx.environment[key]
            .clone()
            .unwrap_or_else(|| panic!("nginx: {key} has no value"))
    };
    let published: Vec<String> = nginx
        .ports
        .iter()
        .map(|p| interpolation::with_defaults(p))
        .collect();
    assert_eq!(published, [format!("443:{}", env("LISTEN_ADDR"))]);
    let readme = read("README.md");
    let section = readme
        .split("## Running with Docker Compose")
        .nth(1)
        .expect("README has a Docker Compose section");
    assert!(
        section.contains("https://localhost/"),
        "README names the address"
    );
    assert!(
        section.contains("`SLUICE_HTTPS_PORT`"),
        "README names the port variable"
    );

    // The template: every placeholder is set by the service, and it is the file mounted.
    assert!(
        nginx
            .volumes
            .iter()
            .any(|v| v == "./nginx/nginx.conf:/etc/nginx/templates/nginx.conf.template:ro")
    );
    assert_eq!(env("NGINX_ENVSUBST_OUTPUT_DIR"), "/etc/nginx");
    let template = read("nginx/nginx.conf");
    let placeholders: BTreeSet<String> = interpolation::references(&template)
        .into_iter()
        .map(|r| r.name)
        .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    let expected: BTreeSet<String> = [
        "API_UPSTREAMS",
        "LISTEN_ADDR",
        "TLS_CERT",
        "TLS_KEY",
        "NGINX_TEMP_DIR",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(placeholders, expected);
    for upstream in ["api-1:8080", "api-2:8080"] {
        assert!(env("API_UPSTREAMS").contains(&format!("server {upstream}")));
    }
    // The API believes X-Forwarded-For from nginx's fixed address only.
    let nginx_ip = nginx
        .networks
        .as_ref()
        .and_then(|n| n["sluice"]["ipv4_address"].as_str())
        .expect("nginx has a fixed address");
    let trusted = compose.services["api-1"].environment["SLUICE__HTTP__TRUSTED_PROXIES"].clone();
    assert_eq!(trusted.as_deref(), Some(nginx_ip));
}

#[test]
fn every_variable_is_in_env_example() {
    let text = read("docker-compose.yml");
    let assigned = env_example_assignments();
    let example = read(".env.example");
    for reference in interpolation::references(&text) {
        assert!(
            assigned.contains(&reference.name),
            "docker-compose.yml uses ${{{}}}, which .env.example does not set",
            reference.name
        );
    }
    // Every SLUICE__* setting the containers get is at least documented there.
    let compose = compose();
    for (name, service) in &compose.services {
        for key in service
            .environment
            .keys()
            .filter(|k| k.starts_with("SLUICE__"))
        {
            assert!(
                example.contains(key.as_str()),
                "{name}: {key} is not in .env.example"
            );
        }
    }
    // And no secret has a default in the compose file: they come from .env.
    let mut secrets_seen = BTreeSet::new();
    for reference in interpolation::references(&text) {
        if SECRETS.contains(&reference.name.as_str()) {
            assert_eq!(reference.default, None, "{} has a default", reference.name);
            secrets_seen.insert(reference.name);
        }
    }
    assert_eq!(secrets_seen, SECRETS.map(str::to_owned).into());
}

/// The variables of .env.example that hold secrets: scripts/compose-env.sh generates each.
const SECRETS: [&str; 8] = [
    "SLUICE__AUTH__JWT_SECRET",
    "SLUICE__ADMIN__TOKEN",
    "POSTGRES_PASSWORD",
    "POSTGRES_APP_PASSWORD",
    "RABBITMQ_ADMIN_PASSWORD",
    "RABBITMQ_API_PASSWORD",
    "RABBITMQ_WORKER_PASSWORD",
    "REDIS_PASSWORD",
];

#[test]
fn every_secret_is_a_placeholder_that_compose_env_replaces() {
    for line in read(".env.example").lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if SECRETS.contains(&name) {
            // scripts/compose-env.sh replaces exactly `NAME=change-me` lines.
            assert_eq!(value, "change-me", "{name} in .env.example");
        }
    }
    let script = read("scripts/compose-env.sh");
    assert!(
        script.contains("=change-me$"),
        "compose-env.sh replaces change-me values"
    );
}

#[test]
fn each_process_gets_only_its_own_secrets() {
    let compose = compose();
    let env = |service: &str, key: &str| -> Option<String> {
        compose.services[service]
            .environment
            .get(key)
            .cloned()
            .flatten()
    };
    // The API: the JWT secret, the admin token, the app role; key aliases, never the keys.
    for api in ["api-1", "api-2"] {
        assert!(
            env(api, "SLUICE__AUTH__JWT_SECRET").is_some(),
            "{api}: JWT secret"
        );
        assert!(
            env(api, "SLUICE__ADMIN__TOKEN").is_some(),
            "{api}: admin token"
        );
        assert!(
            env(api, "GEMINI_API_KEYS").is_none(),
            "{api} gets provider keys"
        );
        assert!(
            env(api, "SLUICE__KEYS__FILE").is_none(),
            "{api} gets a keys file"
        );
        let aliases = env(api, "SLUICE__KEYS__ALIASES").expect("the API lists key aliases");
        assert_eq!(interpolation::with_defaults(&aliases), "dev-1,dev-2,dev-3");
        let url = env(api, "SLUICE__DATABASE__URL").expect("a database URL");
        assert!(
            url.starts_with("postgres://sluice_app:${POSTGRES_APP_PASSWORD"),
            "{url}"
        );
        assert!(
            env(api, "SLUICE__LIMITS__RPM").is_some(),
            "{api}: the limits it shows"
        );
    }
    // The migration job alone connects as the owner.
    let url = env("migrate", "SLUICE__DATABASE__URL").expect("a database URL");
    assert!(
        url.starts_with("postgres://sluice:${POSTGRES_PASSWORD"),
        "{url}"
    );
    // The workers: their broker user and the keys; no JWT secret, admin token or database.
    for key in [
        "SLUICE__AUTH__JWT_SECRET",
        "SLUICE__ADMIN__TOKEN",
        "SLUICE__DATABASE__URL",
    ] {
        assert!(env("worker", key).is_none(), "the worker gets {key}");
    }
    assert!(env("worker", "GEMINI_API_KEYS").is_some());
    // The aliases the API lists are those of the workers' default keys.
    let keys = interpolation::with_defaults(&env("worker", "GEMINI_API_KEYS").unwrap());
    let aliases: Vec<&str> = keys
        .split(',')
        .filter_map(|k| k.split_once('='))
        .map(|(a, _)| a)
        .collect();
    assert_eq!(aliases.join(","), "dev-1,dev-2,dev-3");
    // Every process signs in to Redis and to RabbitMQ with a password from .env.
    for service in ["api-1", "migrate", "worker"] {
        let redis = env(service, "SLUICE__REDIS__URL").unwrap();
        assert!(
            redis.starts_with("redis://:${REDIS_PASSWORD:?"),
            "{service}: {redis}"
        );
        let amqp = env(service, "SLUICE__AMQP__URL").unwrap();
        assert!(
            amqp.contains(":${RABBITMQ_") && amqp.contains("_PASSWORD:?"),
            "{service}: {amqp}"
        );
    }
    let redis = &compose.services["redis"];
    assert!(
        redis
            .command
            .windows(2)
            .any(|w| w[0] == "--requirepass" && w[1].starts_with("${REDIS_PASSWORD:?")),
        "redis requires a password: {:?}",
        redis.command
    );
    // PostgreSQL creates the API's role when its volume is new; RabbitMQ sets the users'
    // passwords at every start, from definitions that hold none.
    let mounts = |name: &str| compose.services[name].volumes.join(" ");
    assert!(mounts("postgres").contains("./postgres/initdb:/docker-entrypoint-initdb.d"));
    assert!(mounts("postgres").contains("./postgres/app-role.sql:/sluice/app-role.sql"));
    assert!(read("postgres/initdb/10-app-role.sh").contains("-f /sluice/app-role.sql"));
    assert!(mounts("rabbitmq").contains("./rabbitmq/boot.sh:/usr/local/bin/sluice-rabbitmq-boot"));
    assert_eq!(
        compose.services["rabbitmq"].command,
        ["bash", "/usr/local/bin/sluice-rabbitmq-boot"]
    );
    let boot = read("rabbitmq/boot.sh");
    for user in ["sluice-admin", "sluice-api", "sluice-worker"] {
        assert!(
            boot.contains(&format!("change_password {user} ")),
            "boot.sh sets {user}"
        );
    }
    let definitions: serde_json::Value =
        serde_json::from_str(&read("rabbitmq/definitions.json")).unwrap();
    for user in definitions["users"].as_array().unwrap() {
        assert!(
            user.get("password_hash").is_none() && user.get("password").is_none(),
            "definitions.json holds a password for {}",
            user["name"]
        );
    }
}

#[test]
fn images_are_built_multi_stage_and_run_as_non_root() {
    let compose = compose();
    let mut built = 0;
    for (name, service) in &compose.services {
        let Some(build) = &service.build else {
            continue;
        };
        built += 1;
        assert_eq!(build.context, ".", "{name}");
        let path = Path::new(&build.context).join(&build.dockerfile);
        let text = read(path.to_str().expect("utf-8 path"));
        let stages = dockerfile::stages(&text);
        assert!(
            stages.contains_key(&build.target),
            "{name}: no stage {}",
            build.target
        );
        let (user, base) = dockerfile::effective(&stages, &build.target);
        let user =
            user.unwrap_or_else(|| panic!("{name}: stage {} runs as root (no USER)", build.target));
        assert!(!dockerfile::is_root(&user), "{name}: USER {user}");
        assert!(
            base.starts_with("debian:") && base.ends_with("-slim"),
            "{name}: runtime {base}"
        );
        // Dependencies are built in a layer of their own (cargo-chef), before the sources.
        let builder = stages.get("builder").expect("a builder stage");
        let cook = builder
            .lines
            .iter()
            .position(|l| l.contains("cargo chef cook"));
        let sources = builder.lines.iter().position(|l| l == "COPY . .");
        assert!(
            matches!((cook, sources), (Some(c), Some(s)) if c < s),
            "{name}: cached dependency layer"
        );
    }
    assert_eq!(
        built, 5,
        "migrate, api-1, api-2, worker and mock-gemini are built here"
    );
}
