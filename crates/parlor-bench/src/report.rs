//! What a scenario found: printed as a table, written as JSON, with the machine and the CPU
//! each side used so a reader can tell who was the bottleneck.

use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::server::{Server, cpu_seconds, tree_cpu_seconds};

/// Rows of (what, figure) plus the raw JSON of one scenario.
pub struct Report {
    scenario: String,
    rows: Vec<(String, String)>,
    json: Map<String, Value>,
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_string(),
            rows: Vec::new(),
            json: Map::new(),
        }
    }

    /// A figure for the table and the JSON.
    pub fn add(&mut self, key: &str, label: &str, value: impl Into<Value>) {
        let value = value.into();
        let shown = match &value {
            Value::Number(number) if number.is_f64() => {
                let float = number.as_f64().unwrap_or_default();
                if float.abs() >= 100.0 {
                    format!("{float:.0}")
                } else {
                    format!("{float:.2}")
                }
            }
            other => other.to_string(),
        };
        self.rows.push((label.to_string(), shown));
        self.json.insert(key.to_string(), value);
    }

    /// A value for the JSON only (a timeline, say).
    pub fn attach(&mut self, key: &str, value: Value) {
        self.json.insert(key.to_string(), value);
    }

    /// p50, p99, p99.9 and max of a latency histogram recorded in microseconds, in ms.
    pub fn latency(&mut self, key: &str, label: &str, histogram: &Histogram<u64>) {
        let ms = |us: u64| us as f64 / 1000.0;
        let summary = json!({
            "count": histogram.len(),
            "p50_ms": ms(histogram.value_at_quantile(0.50)),
            "p99_ms": ms(histogram.value_at_quantile(0.99)),
            "p999_ms": ms(histogram.value_at_quantile(0.999)),
            "max_ms": ms(histogram.max()),
        });
        self.rows.push((
            format!("{label} p50 / p99 / p99.9 / max (ms)"),
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2}",
                ms(histogram.value_at_quantile(0.50)),
                ms(histogram.value_at_quantile(0.99)),
                ms(histogram.value_at_quantile(0.999)),
                ms(histogram.max()),
            ),
        ));
        self.json.insert(key.to_string(), summary);
    }

    /// Prints the table and writes `DIR/<scenario>.json`.
    pub fn finish(self, out: &Path) -> anyhow::Result<Value> {
        let width = self
            .rows
            .iter()
            .map(|(label, _)| label.len())
            .max()
            .unwrap_or(0);
        println!("\n== {} ==", self.scenario);
        for (label, value) in &self.rows {
            println!("  {label:<width$}  {value}");
        }
        let mut json = self.json;
        json.insert("scenario".into(), self.scenario.clone().into());
        json.insert("machine".into(), machine());
        std::fs::create_dir_all(out)?;
        let path = out.join(format!("{}.json", self.scenario));
        let value = Value::Object(json);
        std::fs::write(&path, serde_json::to_string_pretty(&value)?)?;
        println!("  (written to {})", path.display());
        Ok(value)
    }
}

/// CPU used by the server, by each named role (`--cpu`) and by this generator over an
/// interval, as cores busy.
pub struct CpuMeter {
    started: Instant,
    server: Option<f64>,
    generator: f64,
    roles: Vec<(String, u32, Option<f64>)>,
}

/// The CPU seconds each named role used over a meter's interval.
pub struct RolesCpu(pub Vec<(String, f64)>);

impl RolesCpu {
    /// Adds each role's CPU-µs per message, so capacity for N machines is arithmetic.
    pub fn per_message(&self, report: &mut Report, messages: usize) {
        for (name, seconds) in &self.0 {
            report.add(
                &format!("{name}_cpu_us_per_message"),
                &format!("{name} CPU-µs per message"),
                seconds * 1e6 / messages as f64,
            );
        }
    }
}

impl CpuMeter {
    pub fn start(server: &Server) -> CpuMeter {
        CpuMeter {
            started: Instant::now(),
            server: server.cpu_seconds(),
            generator: own_cpu_seconds(),
            roles: server
                .roles
                .iter()
                .map(|(name, pid)| (name.clone(), *pid, tree_cpu_seconds(*pid)))
                .collect(),
        }
    }

    /// Adds `server_cores`, `generator_cores` and `<role>_cores` (CPU seconds per wall
    /// second) to `report`, and answers what each role used.
    pub fn finish(self, server: &Server, report: &mut Report) -> RolesCpu {
        let wall = self.started.elapsed().as_secs_f64();
        let mut roles = Vec::new();
        for (name, pid, before) in self.roles {
            let (Some(before), Some(after)) = (before, tree_cpu_seconds(pid)) else {
                eprintln!("no CPU figures for {name}: process {pid} is not there");
                continue;
            };
            report.add(
                &format!("{name}_cores"),
                &format!("{name} CPU (cores busy)"),
                (after - before) / wall,
            );
            roles.push((name, after - before));
        }
        if let (Some(before), Some(after)) = (self.server, server.cpu_seconds()) {
            report.add(
                "server_cores",
                "server CPU (cores busy, of 2)",
                (after - before) / wall,
            );
        }
        report.add(
            "generator_cores",
            "generator CPU (cores busy, of 2)",
            (own_cpu_seconds() - self.generator) / wall,
        );
        RolesCpu(roles)
    }
}

pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or_default()
}

pub fn histogram() -> Histogram<u64> {
    // Microseconds from 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_default();
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": memory_kib as f64 / 1024.0 / 1024.0,
        "date": time::OffsetDateTime::now_utc().date().to_string(),
    })
}
