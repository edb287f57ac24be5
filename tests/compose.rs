//! The deployment files (Dockerfile, docker-compose.yml, .env.example,
//! .dockerignore; for a Citus cluster docker-compose.citus.yml,
//! .env.citus.example and docker/citus/Dockerfile) checked against the real
//! CLI, without Docker. Each compose file is checked with its own .env
//! example ([`DEPLOYMENTS`]):
//!
//! - every `tripload` command the compose services and the image run (their
//!   `command:` or the image's CMD, and the healthchecks) is a real
//!   subcommand with real flags: the real binary accepts it with `--help`,
//!   every `--flag` appears in that help, and the CLI parser accepts the
//!   command as it will run;
//! - every `TRIPLOAD_*` variable and `DATABASE_URL` set on those services is
//!   one the binary reads (`[env: NAME` in the subcommand's help), and its
//!   value (as .env.example sets it) is accepted by the flag it stands for;
//! - every `${VAR}` in the compose file is defined in .env.example, with the
//!   same default, and .env.example defines nothing else;
//! - images are pinned (a tag that is not `latest`, or a digest);
//! - the database has a healthcheck, dependencies wait on real conditions, and
//!   the watcher's landing directory and its siblings are on one volume;
//! - the image copies what the build compiles in (include_str!);
//! - every published port is bound to the host's loopback, and a tripload
//!   server listening beyond loopback inside its container has a token the
//!   operator must set (compose refuses to start without it);
//! - no PostgreSQL service is told to trust connections;
//! - the Citus cluster: its password is required (no default) and SCRAM is
//!   the only authentication on every node, its workers are registered with
//!   the coordinator before the schema is migrated, tripload talks to the
//!   coordinator, and every node runs one image with pinned Citus and
//!   PostGIS versions.

use clap::Parser;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

// ------------------------------------------------------------------ files --

/// A compose file with its .env example and its database services.
struct Deployment {
    compose: &'static str,
    env: &'static str,
    /// The PostgreSQL services (healthchecked; the first is the one tripload
    /// talks to).
    databases: &'static [&'static str],
}

static DEPLOYMENTS: [Deployment; 2] = [
    Deployment {
        compose: "docker-compose.yml",
        env: ".env.example",
        databases: &["db"],
    },
    Deployment {
        compose: "docker-compose.citus.yml",
        env: ".env.citus.example",
        databases: &["coordinator", "worker1", "worker2"],
    },
];

/// The Citus cluster's deployment.
fn citus() -> &'static Deployment {
    &DEPLOYMENTS[1]
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> String {
    let path = root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Fails the test with every problem found, one per line (each once).
fn report(what: &str, mut problems: Vec<String>) {
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

/// The deployment's .env example as KEY -> value, the way compose reads a
/// .env file.
fn env_example(d: &Deployment) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let mut problems = Vec::new();
    for (n, line) in read(d.env).lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((k, v)) = t.split_once('=') else {
            problems.push(format!("{} line {}: not KEY=value: {line:?}", d.env, n + 1));
            continue;
        };
        let k = k.trim().to_string();
        let v = v.trim();
        let v = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(v);
        if vars.insert(k.clone(), v.to_string()).is_some() {
            problems.push(format!("{} defines {k} twice", d.env));
        }
    }
    report(d.env, problems);
    vars
}

/// What an operator must set: variables .env.example leaves empty that the
/// compose file requires (`${NAME:?why}`).
fn operator_set(d: &Deployment, vars: &BTreeMap<String, String>) -> BTreeSet<String> {
    let compose = read(d.compose);
    vars.iter()
        .filter(|(k, v)| v.is_empty() && compose.contains(&format!("${{{k}:?")))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The variables as in a deployment: .env.example with a value for each one
/// the operator must set.
fn deployed_env(d: &Deployment) -> BTreeMap<String, String> {
    let mut vars = env_example(d);
    for k in operator_set(d, &vars) {
        vars.insert(k, "operator-set-value".into());
    }
    vars
}

fn compose(d: &Deployment) -> Value {
    serde_yaml::from_str(&read(d.compose))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", d.compose))
}

fn services(compose: &Value) -> Vec<(String, &Value)> {
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("a compose file has no `services:` mapping");
    services
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_string(), v))
        .collect()
}

// ---------------------------------------------------------- interpolation --

/// One `${NAME...}` / `$NAME` reference.
#[derive(Debug, Clone)]
struct VarRef {
    name: String,
    /// `:-`, `-`, `:?`, `?`, `:+`, `+`, or "" for none.
    op: String,
    arg: String,
}

/// Compose interpolation of `s` with the variables of `vars` (as a .env file
/// sets them); also returns the references found. `$$` is a literal `$`.
fn interpolate(s: &str, vars: &BTreeMap<String, String>) -> Result<(String, Vec<VarRef>), String> {
    let mut out = String::new();
    let mut refs = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
            let inner = &body[..end];
            if inner.contains('$') {
                return Err(format!(
                    "nested interpolation in {s:?} is not supported here"
                ));
            }
            let name_len = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            let (name, tail) = inner.split_at(name_len);
            if name.is_empty() {
                return Err(format!("bad variable reference ${{{inner}}} in {s:?}"));
            }
            let op = [":-", ":?", ":+", "-", "?", "+"]
                .into_iter()
                .find(|op| tail.starts_with(op));
            let (op, arg) = match op {
                Some(op) => (op, &tail[op.len()..]),
                None if tail.is_empty() => ("", ""),
                None => return Err(format!("bad variable reference ${{{inner}}} in {s:?}")),
            };
            let value = vars.get(name);
            let set = value.is_some();
            let non_empty = value.is_some_and(|v| !v.is_empty());
            let v = value.cloned().unwrap_or_default();
            out.push_str(&match op {
                ":-" if !non_empty => arg.to_string(),
                "-" if !set => arg.to_string(),
                ":?" if !non_empty => return Err(format!("{name} is required: {arg}")),
                "?" if !set => return Err(format!("{name} is required: {arg}")),
                ":+" => {
                    if non_empty {
                        arg.to_string()
                    } else {
                        String::new()
                    }
                }
                "+" => {
                    if set {
                        arg.to_string()
                    } else {
                        String::new()
                    }
                }
                _ => v,
            });
            refs.push(VarRef {
                name: name.to_string(),
                op: op.to_string(),
                arg: arg.to_string(),
            });
            rest = &body[end + 1..];
        } else {
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if name_len == 0 || after.starts_with(|c: char| c.is_ascii_digit()) {
                out.push('$');
                rest = after;
                continue;
            }
            let name = &after[..name_len];
            out.push_str(vars.get(name).map(String::as_str).unwrap_or(""));
            refs.push(VarRef {
                name: name.to_string(),
                op: String::new(),
                arg: String::new(),
            });
            rest = &after[name_len..];
        }
    }
    out.push_str(rest);
    Ok((out, refs))
}

/// Every string in the YAML (keys and values; comments are not interpolated
/// by compose, and serde_yaml does not see them).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Sequence(seq) => seq.iter().for_each(|v| strings(v, out)),
        Value::Mapping(m) => {
            for (k, v) in m {
                strings(k, out);
                strings(v, out);
            }
        }
        Value::Tagged(t) => strings(&t.value, out),
        _ => {}
    }
}

/// A string (or number) field, interpolated.
fn text(v: &Value, vars: &BTreeMap<String, String>) -> String {
    let raw = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a string, found {other:?}"),
    };
    interpolate(&raw, vars).unwrap_or_else(|e| panic!("{e}")).0
}

/// `command:`/`test:` as an argument list: a YAML sequence, or a string that
/// compose splits on whitespace.
fn arg_list(v: &Value, vars: &BTreeMap<String, String>) -> Vec<String> {
    match v {
        Value::Sequence(seq) => seq.iter().map(|a| text(a, vars)).collect(),
        _ => text(v, vars).split_whitespace().map(String::from).collect(),
    }
}

/// A service's `environment:` (mapping or `KEY=value` list), interpolated.
fn environment(svc: &Value, vars: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match svc.get("environment") {
        None => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let v = if v.is_null() {
                    String::new()
                } else {
                    text(v, vars)
                };
                env.insert(text(k, vars), v);
            }
        }
        Some(Value::Sequence(seq)) => {
            for item in seq {
                let item = text(item, vars);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                env.insert(k.to_string(), v.to_string());
            }
        }
        Some(other) => panic!("environment: unexpected {other:?}"),
    }
    env
}

// ------------------------------------------------------------- Dockerfile --

struct Dockerfile {
    /// (INSTRUCTION, arguments), continuation lines joined, comments dropped.
    instructions: Vec<(String, String)>,
}

impl Dockerfile {
    /// The Dockerfile of tripload's image.
    fn load() -> Dockerfile {
        Dockerfile::load_from("Dockerfile")
    }

    fn load_from(path: &str) -> Dockerfile {
        let mut instructions = Vec::new();
        let mut logical = String::new();
        for line in read(path).lines() {
            let t = line.trim();
            if t.starts_with('#') || (logical.is_empty() && t.is_empty()) {
                continue;
            }
            if let Some(cont) = t.strip_suffix('\\') {
                logical.push_str(cont);
                logical.push(' ');
                continue;
            }
            logical.push_str(t);
            let (instr, args) = logical
                .split_once(char::is_whitespace)
                .unwrap_or((&logical, ""));
            instructions.push((instr.to_ascii_uppercase(), args.trim().to_string()));
            logical.clear();
        }
        Dockerfile { instructions }
    }

    /// Instructions of the final stage (after the last FROM).
    fn final_stage(&self) -> &[(String, String)] {
        let last_from = self
            .instructions
            .iter()
            .rposition(|(i, _)| i == "FROM")
            .expect("Dockerfile has no FROM");
        &self.instructions[last_from + 1..]
    }

    fn last(&self, instr: &str) -> Option<&str> {
        self.final_stage()
            .iter()
            .rev()
            .find(|(i, _)| i == instr)
            .map(|(_, a)| a.as_str())
    }

    /// An exec-form (JSON array) instruction of the final stage.
    fn exec_form(&self, instr: &str) -> Option<Vec<String>> {
        self.last(instr).map(|a| {
            serde_json::from_str(a).unwrap_or_else(|e| {
                panic!("Dockerfile {instr} must be in exec form (a JSON array), got {a:?}: {e}")
            })
        })
    }

    /// The HEALTHCHECK command (exec form), if there is one.
    fn healthcheck(&self) -> Option<Vec<String>> {
        let mut a = self.last("HEALTHCHECK")?.trim();
        while a.starts_with("--") {
            a = a
                .split_once(char::is_whitespace)
                .map_or("", |x| x.1)
                .trim_start();
        }
        if a == "NONE" {
            return None;
        }
        let cmd = a
            .strip_prefix("CMD")
            .unwrap_or_else(|| panic!("Dockerfile HEALTHCHECK: expected CMD, got {a:?}"));
        Some(serde_json::from_str(cmd.trim()).unwrap_or_else(|e| {
            panic!("Dockerfile HEALTHCHECK CMD must be in exec form (a JSON array): {e}")
        }))
    }

    /// (image, stage alias) of every FROM.
    fn froms(&self) -> Vec<(String, Option<String>)> {
        self.instructions
            .iter()
            .filter(|(i, _)| i == "FROM")
            .map(|(_, a)| {
                let words: Vec<&str> = a
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let alias = words
                    .iter()
                    .position(|w| w.eq_ignore_ascii_case("as"))
                    .and_then(|p| words.get(p + 1))
                    .map(|s| s.to_string());
                (
                    words.first().expect("FROM without an image").to_string(),
                    alias,
                )
            })
            .collect()
    }
}

// -------------------------------------------------------------------- CLI --

/// `tripload ARGS --help`: its output, or why it failed.
fn help(args: &[String]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_tripload"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run tripload");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`tripload {} --help` exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `help` documents `flag` (`--jobs` or `-j`) as an option.
fn help_has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// Environment variables the help documents: NAME -> (long flag, takes a value).
fn env_flags(help: &str) -> BTreeMap<String, (String, bool)> {
    let mut map = BTreeMap::new();
    let mut current: Option<(String, bool)> = None;
    for line in help.lines() {
        let t = line.trim_start();
        // Option headers are indented 2 or 6 columns, descriptions more.
        if t.starts_with('-') && line.len() - t.len() <= 6 {
            current = t
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .map(|w| (w.trim_end_matches(',').to_string(), t.contains('<')));
        }
        if let Some(i) = t.find("[env: ") {
            let name: String = t[i + 6..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let Some(cur) = &current {
                map.insert(name, cur.clone());
            }
        }
    }
    map
}

/// The command line as the binary will parse it (no `--help`): a missing
/// subcommand or argument, or a value its flag rejects, is an error here.
fn parses(args: &[String]) -> Result<(), String> {
    tripload::cmd::Cli::try_parse_from(
        std::iter::once("tripload".to_string()).chain(args.iter().cloned()),
    )
    .map(|_| ())
    .map_err(|e| match e.kind() {
        clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            "a subcommand is missing (the binary prints its help and exits 2)".to_string()
        }
        _ => e.render().to_string().trim().to_string(),
    })
}

/// Checks one tripload command; returns its help text if it is a valid
/// command line.
fn check_command(label: &str, args: &[String], problems: &mut Vec<String>) -> Option<String> {
    if args.is_empty() {
        problems.push(format!("{label}: empty tripload command"));
        return None;
    }
    let help = match help(args) {
        Ok(h) => h,
        Err(e) => {
            problems.push(format!("{label}: not a real tripload command line: {e}"));
            return None;
        }
    };
    for a in args {
        let flag = if a.starts_with("--") {
            a.split('=').next().unwrap_or(a)
        } else if a.len() >= 2
            && a.starts_with('-')
            && a[1..2].chars().all(|c| c.is_ascii_alphabetic())
        {
            &a[..2]
        } else {
            continue;
        };
        if !help_has_flag(&help, flag) {
            problems.push(format!(
                "{label}: flag {flag} does not appear in `tripload {} --help`",
                args.join(" ")
            ));
        }
    }
    if let Err(e) = parses(args) {
        problems.push(format!(
            "{label}: `tripload {}` is rejected: {e}",
            args.join(" ")
        ));
        return None;
    }
    Some(help)
}

/// The reason tripload reads a variable that is not a clap `[env: ...]`.
fn read_outside_clap(name: &str) -> Option<&'static str> {
    // The log filter: EnvFilter::try_from_env("TRIPLOAD_LOG") in src/cmd/mod.rs.
    (name == "TRIPLOAD_LOG" && read("src/cmd/mod.rs").contains("try_from_env(\"TRIPLOAD_LOG\")"))
        .then_some("the log filter (src/cmd/mod.rs)")
}

/// A service that runs the image built from the Dockerfile.
struct TriploadService {
    name: String,
    /// The command it runs (its `command:` or the image's CMD).
    command: Vec<String>,
    healthcheck: Option<Vec<String>>,
    env: BTreeMap<String, String>,
    svc: Value,
}

fn tripload_services(
    compose: &Value,
    vars: &BTreeMap<String, String>,
    docker: &Dockerfile,
) -> Vec<TriploadService> {
    let all = services(compose);
    let built: BTreeSet<String> = all
        .iter()
        .filter(|(_, s)| builds_tripload(s, vars))
        .filter_map(|(_, s)| s.get("image").map(|i| text(i, vars)))
        .collect();
    let mut out = Vec::new();
    for (name, svc) in all {
        let image = svc.get("image").map(|i| text(i, vars));
        let other_build = svc.get("build").is_some() && !builds_tripload(svc, vars);
        if other_build
            || (!builds_tripload(svc, vars) && !image.as_ref().is_some_and(|i| built.contains(i)))
        {
            continue;
        }
        if let Some(ep) = svc.get("entrypoint") {
            assert_eq!(
                arg_list(ep, vars),
                ["tripload"],
                "service {name}: entrypoint must stay `tripload`"
            );
        }
        let command = match svc.get("command") {
            Some(c) => arg_list(c, vars),
            None => docker.exec_form("CMD").unwrap_or_default(),
        };
        let healthcheck = match svc.get("healthcheck") {
            Some(h) if h.get("disable").and_then(Value::as_bool) == Some(true) => None,
            Some(h) => h.get("test").map(|t| {
                // ["CMD", args...], ["CMD-SHELL", "a shell line"], or a
                // string (a shell line).
                let test = arg_list(t, vars);
                match test.split_first() {
                    Some((first, rest)) if first == "CMD" => rest.to_vec(),
                    Some((first, _)) if first == "NONE" => Vec::new(),
                    Some((first, rest)) if first == "CMD-SHELL" => rest
                        .join(" ")
                        .split_whitespace()
                        .map(String::from)
                        .collect(),
                    _ => test,
                }
            }),
            None => docker.healthcheck(),
        }
        .filter(|t| !t.is_empty());
        out.push(TriploadService {
            env: environment(svc, vars),
            name,
            command,
            healthcheck,
            svc: svc.clone(),
        });
    }
    out
}

/// A service's build context (`build: DIR` or `build: {context: DIR}`).
fn build_context(svc: &Value, vars: &BTreeMap<String, String>) -> Option<String> {
    let build = svc.get("build")?;
    let context = match build {
        Value::Mapping(_) => build
            .get("context")
            .map_or(".".to_string(), |c| text(c, vars)),
        other => text(other, vars),
    };
    Some(context.trim_end_matches('/').to_string())
}

/// Whether a service's image is built from tripload's Dockerfile (the
/// repository's root).
fn builds_tripload(svc: &Value, vars: &BTreeMap<String, String>) -> bool {
    build_context(svc, vars).is_some_and(|c| c == "." || c.is_empty())
}

/// `tripload ARGS` -> ARGS; anything else is reported.
fn tripload_args(label: &str, cmd: &[String], problems: &mut Vec<String>) -> Option<Vec<String>> {
    match cmd.split_first() {
        Some((first, rest)) if first == "tripload" || first.ends_with("/tripload") => {
            Some(rest.to_vec())
        }
        _ => {
            problems.push(format!(
                "{label}: expected a `tripload ...` command, got {cmd:?}"
            ));
            None
        }
    }
}

// ------------------------------------------------------------------ tests --

#[test]
fn dockerfile_runs_real_tripload_commands() {
    let docker = Dockerfile::load();
    let mut problems = Vec::new();
    match docker.exec_form("ENTRYPOINT") {
        Some(ep) if ep == ["tripload"] => {}
        other => problems.push(format!("ENTRYPOINT must be [\"tripload\"], is {other:?}")),
    }
    match docker.exec_form("CMD") {
        Some(cmd) => {
            check_command("Dockerfile CMD", &cmd, &mut problems);
        }
        None => problems.push("Dockerfile has no CMD".into()),
    }
    match docker.healthcheck() {
        Some(hc) => {
            if let Some(args) = tripload_args("Dockerfile HEALTHCHECK", &hc, &mut problems) {
                check_command("Dockerfile HEALTHCHECK", &args, &mut problems);
            }
        }
        None => problems.push("Dockerfile has no HEALTHCHECK".into()),
    }
    match docker.last("USER") {
        Some(u) if !matches!(u.split(':').next(), Some("root" | "0")) => {}
        other => problems.push(format!(
            "the final stage must run as a non-root USER, has {other:?}"
        )),
    }
    report("Dockerfile", problems);
}

#[test]
fn compose_runs_real_tripload_commands_and_variables() {
    for d in &DEPLOYMENTS {
        real_tripload_commands_and_variables(d);
    }
}

fn real_tripload_commands_and_variables(d: &Deployment) {
    let vars = deployed_env(d);
    let docker = Dockerfile::load();
    let compose = compose(d);
    let services = tripload_services(&compose, &vars, &docker);
    assert!(
        services
            .iter()
            .any(|s| s.command.first().map(String::as_str) == Some("watch")),
        "{}: no compose service runs `tripload watch` (services built from the Dockerfile: {:?})",
        d.compose,
        services.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let service_names: BTreeSet<String> = self::services(&compose)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut problems = Vec::new();
    for s in &services {
        let label = format!("service {}", s.name);
        let Some(help) = check_command(&format!("{label} command"), &s.command, &mut problems)
        else {
            continue;
        };
        if let Some(hc) = &s.healthcheck {
            if let Some(args) = tripload_args(&format!("{label} healthcheck"), hc, &mut problems) {
                check_command(&format!("{label} healthcheck"), &args, &mut problems);
            }
        }

        // Variables: read by the binary, and acceptable values.
        let flags = env_flags(&help);
        for (name, value) in &s.env {
            if !(name.starts_with("TRIPLOAD_") || name == "DATABASE_URL") {
                continue;
            }
            let documented = help.contains(&format!("[env: {name}="))
                || help.contains(&format!("[env: {name}]"));
            if !documented {
                if read_outside_clap(name).is_none() {
                    problems.push(format!(
                        "{label}: sets {name}, which `tripload {} --help` does not list as [env: {name}] (the binary does not read it)",
                        s.command.join(" ")
                    ));
                }
                continue;
            }
            let Some((flag, takes_value)) = flags.get(name) else {
                problems.push(format!(
                    "{label}: cannot find the flag of {name} in the help"
                ));
                continue;
            };
            if s.command
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
            {
                problems.push(format!(
                    "{label}: sets {name} but its command also passes {flag}, which overrides it"
                ));
                continue;
            }
            if *takes_value {
                let mut args = s.command.clone();
                args.push(flag.clone());
                args.push(value.clone());
                if let Err(e) = parses(&args) {
                    problems.push(format!(
                        "{label}: {name}={value:?} is rejected (as {flag}): {e}"
                    ));
                }
            }
        }
        // The image has no PostgreSQL: without DATABASE_URL tripload would
        // try to start an embedded server.
        match s.env.get("DATABASE_URL") {
            None => problems.push(format!("{label}: DATABASE_URL is not set")),
            Some(url) => {
                let host = url
                    .rsplit_once('@')
                    .map(|(_, h)| h.split([':', '/', '?']).next().unwrap_or(""));
                if !host.is_some_and(|h| service_names.contains(h)) {
                    problems.push(format!(
                        "{label}: DATABASE_URL's host {host:?} is not a compose service ({service_names:?})"
                    ));
                }
            }
        }
        let smtp = s
            .env
            .get("TRIPLOAD_SMTP_URL")
            .filter(|v| !v.trim().is_empty());
        if smtp.is_some()
            && s.env
                .get("TRIPLOAD_REPORT_TO")
                .is_none_or(|v| v.trim().is_empty())
        {
            problems.push(format!(
                "{label}: TRIPLOAD_SMTP_URL is set but TRIPLOAD_REPORT_TO is empty: tripload exits with a usage error"
            ));
        }

        // A watcher's landing directory and its siblings (processing/,
        // processed/, failed/: claims are renames) on one mounted volume.
        if s.command.first().map(String::as_str) == Some("watch") {
            let landing = s
                .command
                .iter()
                .skip(1)
                .find(|a| !a.starts_with('-'))
                .cloned()
                .unwrap_or_else(|| "data/landing".into());
            let base = Path::new(&landing)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let targets: Vec<String> = s
                .svc
                .get("volumes")
                .and_then(Value::as_sequence)
                .map(|vols| {
                    vols.iter()
                        .filter_map(|v| match v {
                            Value::String(_) => {
                                let v = text(v, &vars);
                                v.split(':').nth(1).map(String::from)
                            }
                            m => m.get("target").map(|t| text(t, &vars)),
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !Path::new(&landing).is_absolute() {
                problems.push(format!(
                    "{label}: watch {landing}: use an absolute landing path"
                ));
            } else if !targets.iter().any(|t| base.starts_with(t)) {
                problems.push(format!(
                    "{label}: watch {landing}: {} (where processing/, processed/ and failed/ go) is not inside one mounted volume (volumes: {targets:?})",
                    base.display()
                ));
            }
        }
    }
    report(&format!("{} tripload services", d.compose), problems);
}

#[test]
fn compose_variables_are_defined_in_env_example() {
    for d in &DEPLOYMENTS {
        variables_are_defined_in_env_example(d);
    }
}

fn variables_are_defined_in_env_example(d: &Deployment) {
    let vars = deployed_env(d);
    let compose = compose(d);
    let mut all = Vec::new();
    strings(&compose, &mut all);
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for s in &all {
        let refs = match interpolate(s, &vars) {
            Ok((_, refs)) => refs,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        for r in refs {
            match vars.get(&r.name) {
                None => problems.push(format!(
                    "${{{}}} is used in {} but not defined in {}",
                    r.name, d.compose, d.env
                )),
                Some(v) if (r.op == ":-" || r.op == "-") && &r.arg != v => problems.push(format!(
                    "${{{}{}{}}}: the compose default {:?} differs from {}'s {:?}",
                    r.name, r.op, r.arg, r.arg, d.env, v
                )),
                Some(_) => {}
            }
            used.insert(r.name);
        }
    }
    for name in vars.keys().filter(|k| !used.contains(*k)) {
        problems.push(format!(
            "{} defines {name}, which {} does not use",
            d.env, d.compose
        ));
    }
    report(&format!("{} / {}", d.compose, d.env), problems);
}

/// `name[:tag][@digest]`: pinned when it has a digest, or a tag other than `latest`.
fn pinned(image: &str) -> Result<(), String> {
    if image.contains("@sha256:") {
        return Ok(());
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => Err(format!("image {image} has no tag")),
        Some((_, "latest")) => Err(format!("image {image} uses `latest`")),
        Some((_, "")) => Err(format!("image {image} has an empty tag")),
        Some(_) => Ok(()),
    }
}

#[test]
fn images_are_pinned() {
    let mut problems = Vec::new();
    let mut dockerfiles = BTreeSet::from(["Dockerfile".to_string()]);
    for d in &DEPLOYMENTS {
        let vars = deployed_env(d);
        let compose = compose(d);
        for (name, svc) in services(&compose) {
            match (svc.get("image"), svc.get("build")) {
                (Some(i), _) => {
                    if let Err(e) = pinned(&text(i, &vars)) {
                        problems.push(format!("{}: service {name}: {e}", d.compose));
                    }
                }
                (None, Some(_)) => {}
                (None, None) => problems.push(format!(
                    "{}: service {name} has neither image nor build",
                    d.compose
                )),
            }
            if let Some(context) = build_context(svc, &vars) {
                dockerfiles.insert(format!("{context}/Dockerfile").replace("./", ""));
            }
        }
    }
    for path in dockerfiles {
        let mut stages = BTreeSet::new();
        for (image, alias) in Dockerfile::load_from(&path).froms() {
            if !stages.contains(&image) {
                if let Err(e) = pinned(&image) {
                    problems.push(format!("{path} FROM: {e}"));
                }
            }
            stages.extend(alias);
        }
    }
    report("image pinning", problems);
}

#[test]
fn db_is_healthchecked_and_dependencies_are_real() {
    for d in &DEPLOYMENTS {
        healthchecked_and_dependencies_are_real(d);
    }
}

fn healthchecked_and_dependencies_are_real(d: &Deployment) {
    let vars = deployed_env(d);
    let compose = compose(d);
    let docker = Dockerfile::load();
    let all = services(&compose);
    let by_name: BTreeMap<&str, &Value> = all.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let mut problems = Vec::new();

    let has_healthcheck = |svc: &Value| match svc.get("healthcheck") {
        Some(h) if h.get("disable").and_then(Value::as_bool) == Some(true) => false,
        Some(h) => h
            .get("test")
            .is_some_and(|t| !arg_list(t, &vars).is_empty()),
        None => builds_tripload(svc, &vars) && docker.healthcheck().is_some(),
    };
    for db in d.databases {
        match by_name.get(db) {
            None => problems.push(format!("there is no `{db}` service")),
            Some(svc) if !has_healthcheck(svc) => {
                problems.push(format!("the {db} service has no healthcheck"))
            }
            Some(_) => {}
        }
    }

    for (name, svc) in &all {
        let Some(deps) = svc.get("depends_on") else {
            continue;
        };
        let deps: Vec<(String, String)> = match deps {
            Value::Sequence(seq) => seq
                .iter()
                .map(|d| (text(d, &vars), "service_started".to_string()))
                .collect(),
            Value::Mapping(m) => m
                .iter()
                .map(|(k, v)| {
                    let cond = v
                        .get("condition")
                        .map_or("service_started".to_string(), |c| text(c, &vars));
                    (text(k, &vars), cond)
                })
                .collect(),
            other => panic!("service {name}: depends_on: unexpected {other:?}"),
        };
        for (dep, cond) in deps {
            let Some(target) = by_name.get(dep.as_str()) else {
                problems.push(format!(
                    "service {name} depends on {dep}, which does not exist"
                ));
                continue;
            };
            match cond.as_str() {
                "service_healthy" if !has_healthcheck(target) => problems.push(format!(
                    "service {name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                )),
                "service_healthy" | "service_started" | "service_completed_successfully" => {}
                other => problems.push(format!(
                    "service {name}: unknown depends_on condition {other}"
                )),
            }
        }
    }
    report(
        &format!("{}: healthchecks and dependencies", d.compose),
        problems,
    );
}

#[test]
fn image_contains_what_the_build_compiles_in() {
    // Directories that src/ include_str!s from (sql/).
    let mut dirs = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("src")).expect("read src/") {
        let path = entry.expect("src entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let code = std::fs::read_to_string(&path).expect("read source");
            for (i, _) in code.match_indices("include_str!(\"../") {
                let rel = &code[i + "include_str!(\"../".len()..];
                if let Some((dir, _)) = rel.split_once('/') {
                    dirs.insert(dir.to_string());
                }
            }
        }
    }
    let docker = Dockerfile::load();
    let copied: Vec<String> = docker
        .instructions
        .iter()
        .filter(|(i, a)| (i == "COPY" || i == "ADD") && !a.contains("--from="))
        .flat_map(|(_, a)| {
            let words: Vec<String> = a
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .map(String::from)
                .collect();
            words[..words.len().saturating_sub(1)].to_vec()
        })
        .collect();
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_matches('/').to_string())
        .collect();
    let mut problems = Vec::new();
    for dir in dirs
        .iter()
        .chain(["src".to_string(), "Cargo.lock".to_string()].iter())
    {
        let is_copied = copied.iter().any(|c| {
            c == "." || c.trim_end_matches('/') == dir || c.starts_with(&format!("{dir}/"))
        });
        if !is_copied {
            problems.push(format!(
                "the Dockerfile does not COPY {dir} (a build input)"
            ));
        }
        if ignored.iter().any(|i| i == dir || i == "*") {
            problems.push(format!(".dockerignore excludes {dir} (a build input)"));
        }
    }
    report("Dockerfile build inputs", problems);
}

/// A published port's host address (`ports:` short or long syntax).
fn port_host_ip(p: &Value, vars: &BTreeMap<String, String>) -> (String, Option<String>) {
    match p {
        Value::Mapping(_) => (format!("{p:?}"), p.get("host_ip").map(|h| text(h, vars))),
        other => {
            // [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]; an IPv6 host in [].
            let spec = text(other, vars);
            let host = if let Some(rest) = spec.strip_prefix('[') {
                rest.split_once(']').map(|(h, _)| h.to_string())
            } else {
                let parts: Vec<&str> = spec.split(':').collect();
                (parts.len() == 3).then(|| parts[0].to_string())
            };
            (spec, host)
        }
    }
}

#[test]
fn ports_are_published_on_loopback_only_and_the_server_needs_a_token() {
    for d in &DEPLOYMENTS {
        loopback_only_and_the_server_needs_a_token(d);
    }
}

fn loopback_only_and_the_server_needs_a_token(d: &Deployment) {
    let vars = deployed_env(d);
    let example = env_example(d);
    let compose = compose(d);
    let docker = Dockerfile::load();
    let mut problems = Vec::new();
    for (name, svc) in services(&compose) {
        for p in svc
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let (spec, host) = port_host_ip(p, &vars);
            let loopback = host
                .as_deref()
                .and_then(|h| h.parse::<std::net::IpAddr>().ok())
                .is_some_and(|ip| ip.is_loopback());
            if !loopback {
                problems.push(format!(
                    "{}: service {name}: port {spec} is published beyond the host's loopback (use 127.0.0.1:HOST:CONTAINER)",
                    d.compose
                ));
            }
        }
    }
    let mut servers = 0;
    for s in tripload_services(&compose, &vars, &docker) {
        let label = format!("{}: service {}", d.compose, s.name);
        let listen = match s.command.first().map(String::as_str) {
            Some("watch") => flag_value(&s.command, "--serve"),
            Some("serve") => flag_value(&s.command, "--listen")
                .or_else(|| s.env.get("TRIPLOAD_SERVE_LISTEN").cloned())
                .or_else(|| Some("127.0.0.1:8080".into())),
            _ => None,
        };
        let Some(listen) = listen else { continue };
        servers += 1;
        let addr: std::net::SocketAddr = match listen.parse() {
            Ok(a) => a,
            Err(e) => {
                problems.push(format!("{label}: listens on {listen:?}: {e}"));
                continue;
            }
        };
        if !s
            .svc
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .any(|p| {
                port_host_ip(p, &vars)
                    .0
                    .ends_with(&format!(":{}", addr.port()))
            })
        {
            problems.push(format!(
                "{label}: the server's port {} is not published",
                addr.port()
            ));
        }
        if addr.ip().is_loopback() {
            continue;
        }
        // Beyond loopback in the container: tripload needs a token, and the
        // compose file must not start without one or ship one.
        if s.command.iter().any(|a| a == "--no-auth") {
            problems.push(format!("{label}: --no-auth on {listen}"));
        }
        let raw = s
            .svc
            .get("environment")
            .and_then(|e| e.get("TRIPLOAD_SERVE_TOKEN"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !raw.starts_with("${TRIPLOAD_SERVE_TOKEN:?") {
            problems.push(format!(
                "{label}: listens on {listen} but TRIPLOAD_SERVE_TOKEN is not required (expected ${{TRIPLOAD_SERVE_TOKEN:?…}}, found {raw:?})"
            ));
        }
        if example
            .get("TRIPLOAD_SERVE_TOKEN")
            .is_none_or(|v| !v.is_empty())
        {
            problems.push(format!(
                "{} must define TRIPLOAD_SERVE_TOKEN empty (a token everyone knows is none)",
                d.env
            ));
        }
        if s.command
            .iter()
            .any(|a| a == "--token" || a.starts_with("--token="))
        {
            problems.push(format!(
                "{label}: --token on the command line (visible in ps); use TRIPLOAD_SERVE_TOKEN"
            ));
        }
        // And tripload itself refuses that address without a token.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tripload"));
        cmd.args(&s.command)
            .env_clear()
            .env("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none");
        let out = cmd.output().expect("run tripload");
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2) || !err.contains("--token") {
            problems.push(format!(
                "{label}: `tripload {}` without a token should be refused (exit 2, naming --token): {:?} {err}",
                s.command.join(" "),
                out.status.code()
            ));
        }
    }
    assert!(servers > 0, "no compose service serves the dashboard");
    report("published ports and the dashboard's token", problems);
}

/// The value of `--flag V` or `--flag=V` in an argument list.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(String::from)
        }
    })
}

// --------------------------------------------------------- authentication --

/// The authentication methods a PostgreSQL service's environment asks for:
/// (setting, method) from POSTGRES_HOST_AUTH_METHOD and the `--auth*=`
/// options of POSTGRES_INITDB_ARGS.
fn auth_methods(env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(m) = env.get("POSTGRES_HOST_AUTH_METHOD") {
        out.push(("POSTGRES_HOST_AUTH_METHOD".to_string(), m.clone()));
    }
    for arg in env
        .get("POSTGRES_INITDB_ARGS")
        .map(|a| a.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if let Some((opt, method)) = arg.split_once('=').filter(|(o, _)| o.starts_with("--auth")) {
            out.push((format!("POSTGRES_INITDB_ARGS {opt}"), method.to_string()));
        }
    }
    out
}

#[test]
fn no_postgres_service_trusts_connections() {
    let mut problems = Vec::new();
    for d in &DEPLOYMENTS {
        let vars = deployed_env(d);
        let compose = compose(d);
        for (name, svc) in services(&compose) {
            for (setting, method) in auth_methods(&environment(svc, &vars)) {
                if method != "scram-sha-256" {
                    problems.push(format!(
                        "{}: service {name}: {setting} is {method:?}: use scram-sha-256",
                        d.compose
                    ));
                }
            }
        }
    }
    report("authentication methods", problems);
}

/// The uninterpolated value of `key` in a service's `environment:` mapping.
fn raw_env<'a>(svc: &'a Value, key: &str) -> Option<&'a str> {
    svc.get("environment")
        .and_then(|e| e.get(key))
        .and_then(Value::as_str)
}

#[test]
fn citus_cluster_requires_its_password_and_authenticates_with_scram_only() {
    let d = citus();
    let vars = deployed_env(d);
    let example = env_example(d);
    let compose = compose(d);
    let by_name: BTreeMap<String, &Value> = services(&compose).into_iter().collect();
    let mut problems = Vec::new();
    if example
        .get("POSTGRES_PASSWORD")
        .is_none_or(|v| !v.is_empty())
    {
        problems.push(format!(
            "{} must define POSTGRES_PASSWORD empty (a password everyone knows is none)",
            d.env
        ));
    }
    for node in d.databases {
        let Some(svc) = by_name.get(*node) else {
            problems.push(format!("there is no `{node}` service"));
            continue;
        };
        // The nodes' own password, and the one they log in to each other with.
        for key in ["POSTGRES_PASSWORD", "PGPASSWORD"] {
            let raw = raw_env(svc, key).unwrap_or("");
            if !raw.starts_with("${POSTGRES_PASSWORD:?") {
                problems.push(format!(
                    "service {node}: {key} must be ${{POSTGRES_PASSWORD:?…}} (required, no default), is {raw:?}"
                ));
            }
        }
        let methods = auth_methods(&environment(svc, &vars));
        for wanted in [
            "POSTGRES_HOST_AUTH_METHOD",
            "POSTGRES_INITDB_ARGS --auth-local",
            "POSTGRES_INITDB_ARGS --auth-host",
        ] {
            if !methods
                .iter()
                .any(|(s, m)| s == wanted && m == "scram-sha-256")
            {
                problems.push(format!(
                    "service {node}: {wanted} must be scram-sha-256 (found {methods:?})"
                ));
            }
        }
    }
    // Wherever the password is used, it is required: no default anywhere.
    let mut all = Vec::new();
    strings(&compose, &mut all);
    for s in &all {
        let Ok((_, refs)) = interpolate(s, &vars) else {
            continue;
        };
        for r in refs.iter().filter(|r| r.name == "POSTGRES_PASSWORD") {
            if r.op != ":?" {
                problems.push(format!(
                    "{s:?}: POSTGRES_PASSWORD must be required (${{POSTGRES_PASSWORD:?…}}), not {:?}",
                    r.op
                ));
            }
        }
    }
    // And compose refuses to start with it unset.
    let mut unset = vars.clone();
    unset.insert("POSTGRES_PASSWORD".into(), String::new());
    let coordinator = by_name.get(d.databases[0]).expect("the coordinator");
    if environment_result(coordinator, &unset).is_ok() {
        problems.push("the coordinator starts without POSTGRES_PASSWORD".into());
    }
    report(
        &format!("{}: passwords and authentication", d.compose),
        problems,
    );
}

/// A service's `environment:` mapping interpolated, or the first error
/// (e.g. a required variable that is unset).
fn environment_result(svc: &Value, vars: &BTreeMap<String, String>) -> Result<(), String> {
    let Some(Value::Mapping(m)) = svc.get("environment") else {
        return Ok(());
    };
    for v in m.values() {
        if let Value::String(s) = v {
            interpolate(s, vars)?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------ the cluster --

/// Every string of a service's `entrypoint:` and `command:`, interpolated
/// (`$$` is a literal `$`), one per line.
fn script_of(svc: &Value, vars: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    for key in ["entrypoint", "command"] {
        if let Some(v) = svc.get(key) {
            let mut raw = Vec::new();
            strings(v, &mut raw);
            parts.extend(raw.iter().map(|s| {
                interpolate(s, vars)
                    .map(|(t, _)| t)
                    .unwrap_or_else(|e| panic!("{e}"))
            }));
        }
    }
    parts.join("\n")
}

/// `depends_on:` as (service, condition).
fn depends_on(svc: &Value, vars: &BTreeMap<String, String>) -> Vec<(String, String)> {
    match svc.get("depends_on") {
        Some(Value::Sequence(seq)) => seq
            .iter()
            .map(|d| (text(d, vars), "service_started".to_string()))
            .collect(),
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                let cond = v
                    .get("condition")
                    .map_or("service_started".to_string(), |c| text(c, vars));
                (text(k, vars), cond)
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn citus_workers_are_registered_before_the_schema_is_migrated() {
    let d = citus();
    let vars = deployed_env(d);
    let compose = compose(d);
    let docker = Dockerfile::load();
    let all = services(&compose);
    let (coordinator, workers) = d.databases.split_first().expect("nodes");
    let mut problems = Vec::new();

    let registering: Vec<&(String, &Value)> = all
        .iter()
        .filter(|(_, svc)| script_of(svc, &vars).contains("citus_add_node"))
        .collect();
    let [(reg, reg_svc)] = registering.as_slice() else {
        panic!(
            "expected one service that registers the workers (citus_add_node), found {:?}",
            registering.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
    };
    let script = script_of(reg_svc, &vars);
    if !script.contains(&format!(
        "citus_set_coordinator_host('{coordinator}', 5432)"
    )) {
        problems.push(format!(
            "service {reg} does not set the coordinator's host ({coordinator})"
        ));
    }
    for w in workers {
        if !script.contains(&format!("citus_add_node('{w}', 5432)")) {
            problems.push(format!("service {reg} does not register worker {w}"));
        }
    }
    if !script.contains("ON_ERROR_STOP=1") {
        problems.push(format!(
            "service {reg}: psql without ON_ERROR_STOP=1 exits 0 on a failed registration"
        ));
    }
    // PostGIS on every node (the workers store geometries).
    let loop_line = script
        .lines()
        .find(|l| l.trim_start().starts_with("for node in"))
        .unwrap_or("");
    if !script.contains("CREATE EXTENSION IF NOT EXISTS postgis")
        || d.databases.iter().any(|n| {
            !loop_line
                .split_whitespace()
                .any(|w| w.trim_end_matches(';') == *n)
        })
    {
        problems.push(format!(
            "service {reg} does not create PostGIS on every node ({:?}): {loop_line:?}",
            d.databases
        ));
    }
    let deps = depends_on(reg_svc, &vars);
    for n in d.databases {
        if !deps.iter().any(|(s, c)| s == n && c == "service_healthy") {
            problems.push(format!(
                "service {reg} must wait for {n} to be healthy (depends_on {deps:?})"
            ));
        }
    }

    // The schema is migrated after the registration, and tripload talks to
    // the coordinator only.
    let tripload = tripload_services(&compose, &vars, &docker);
    let migrate: Vec<&TriploadService> = tripload
        .iter()
        .filter(|s| {
            s.command
                .starts_with(&["db".to_string(), "migrate".to_string()])
        })
        .collect();
    if migrate.is_empty() {
        problems.push("no service runs `tripload db migrate`".into());
    }
    for m in migrate {
        if !depends_on(&m.svc, &vars)
            .iter()
            .any(|(s, c)| s == reg && c == "service_completed_successfully")
        {
            problems.push(format!(
                "service {} migrates before {reg} has registered the workers (depends_on service_completed_successfully)",
                m.name
            ));
        }
    }
    for s in &tripload {
        let host = s
            .env
            .get("DATABASE_URL")
            .and_then(|u| u.rsplit_once('@'))
            .map(|(_, h)| h.split([':', '/', '?']).next().unwrap_or("").to_string());
        if host.as_deref() != Some(*coordinator) {
            problems.push(format!(
                "service {}: DATABASE_URL's host is {host:?}, not the coordinator",
                s.name
            ));
        }
    }
    // The workers are reached inside the compose network only.
    for (name, svc) in &all {
        if workers.contains(&name.as_str()) && svc.get("ports").is_some() {
            problems.push(format!(
                "worker {name} publishes ports (only the coordinator is for clients)"
            ));
        }
    }
    report(&format!("{}: the cluster", d.compose), problems);
}

/// The packages of every `apt-get install` in the Dockerfile's RUNs, with
/// `ARG` defaults substituted: (package, version if pinned with `=`).
fn apt_installs(docker: &Dockerfile) -> Vec<(String, Option<String>)> {
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (instr, a) in &docker.instructions {
        match instr.as_str() {
            "ARG" => {
                if let Some((k, v)) = a.split_once('=') {
                    args.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
                }
            }
            "RUN" => {
                let mut run = a.clone();
                for (k, v) in &args {
                    run = run
                        .replace(&format!("${{{k}}}"), v)
                        .replace(&format!("${k}"), v);
                }
                for step in run.split("&&") {
                    let words: Vec<&str> = step.split_whitespace().collect();
                    let Some(i) = words.windows(2).position(|w| w == ["apt-get", "install"]) else {
                        continue;
                    };
                    for w in &words[i + 2..] {
                        let w = w.trim_matches(|c: char| c == '"' || c == '\'');
                        if w.starts_with('-') || w.is_empty() {
                            continue;
                        }
                        let (name, version) = match w.split_once('=') {
                            Some((n, v)) => (n.to_string(), Some(v.to_string())),
                            None => (w.to_string(), None),
                        };
                        out.push((name, version));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn citus_nodes_run_one_image_with_pinned_citus_and_postgis() {
    let d = citus();
    let vars = deployed_env(d);
    let compose = compose(d);
    let by_name: BTreeMap<String, &Value> = services(&compose).into_iter().collect();
    let mut problems = Vec::new();
    let mut builds = BTreeSet::new();
    for node in d.databases {
        let Some(svc) = by_name.get(*node) else {
            problems.push(format!("there is no `{node}` service"));
            continue;
        };
        let image = svc.get("image").map(|i| text(i, &vars));
        builds.insert((build_context(svc, &vars), image));
        if svc
            .get("command")
            .map(|c| arg_list(c, &vars))
            .unwrap_or_default()
            .first()
            != Some(&"postgres".to_string())
        {
            problems.push(format!("service {node} does not run postgres"));
        }
    }
    let builds: Vec<_> = builds.into_iter().collect();
    let [(Some(context), Some(_))] = builds.as_slice() else {
        panic!("the nodes must build one image (build and image the same on each): {builds:?}");
    };
    let path = format!("{context}/Dockerfile");
    let docker = Dockerfile::load_from(&path);
    let froms = docker.froms();
    let [(base, _)] = froms.as_slice() else {
        panic!("{path}: expected one FROM, found {froms:?}");
    };
    // citusdata/citus:<major>.<minor>.<patch>-pg15: an exact Citus release
    // for the PostgreSQL major tripload is tested with.
    let tag = base.strip_prefix("citusdata/citus:").unwrap_or("");
    let version = tag.strip_suffix("-pg15").unwrap_or("");
    let exact = version.split('.').count() == 3
        && version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !exact {
        problems.push(format!(
            "{path}: FROM {base}: expected citusdata/citus:X.Y.Z-pg15 (an exact Citus release on PostgreSQL 15)"
        ));
    }
    let packages = apt_installs(&docker);
    for (name, version) in &packages {
        match version {
            Some(v) if !v.is_empty() && !v.contains('*') && !v.contains('$') => {}
            _ => problems.push(format!(
                "{path}: apt-get install {name} is not pinned to an exact version ({version:?})"
            )),
        }
    }
    if !packages.iter().any(|(n, _)| n == "postgresql-15-postgis-3") {
        problems.push(format!(
            "{path} does not install PostGIS (postgresql-15-postgis-3): {packages:?}"
        ));
    }
    report(&format!("{}: the nodes' image", d.compose), problems);
}
