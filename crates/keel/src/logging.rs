//! The member's log, as etcd writes its own: `--logger=zap` (JSON lines with etcd 3.5's keys:
//! `level`, `ts`, `caller`, `msg`, then the fields; `--log-format=console` for text) or
//! `--logger=capnslog` (etcd 3.4's text lines, `2006-01-02 15:04:05.000000 I | pkg: message`),
//! to every `--log-outputs` target (stderr, stdout, `systemd/journal`, files; a single file may
//! rotate with `--enable-log-rotation`). `RUST_LOG` overrides `--log-level`. A log line is
//! written whole to each output, never interleaved with another.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How the member logs (from etcd's logging flags).
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// `zap` or `capnslog`.
    pub logger: String,
    /// `json` or `console` (zap only).
    pub format: String,
    /// `debug`, `info`, `warn`, `error`, `panic`, `fatal`.
    pub level: String,
    /// `default`, `stderr`, `stdout`, `systemd/journal`, or file paths.
    pub outputs: Vec<String>,
    /// Rotation of the one file output.
    pub rotation: Option<Rotation>,
}

/// lumberjack's settings, as etcd's --log-rotation-config-json holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Rotation {
    /// Megabytes a file may grow to before it is rotated.
    #[serde(default = "default_max_size")]
    pub maxsize: u64,
    /// Days a rotated file is kept (0: no limit).
    #[serde(default)]
    pub maxage: u64,
    /// Rotated files kept (0: no limit).
    #[serde(default)]
    pub maxbackups: usize,
    /// Name rotated files by local time rather than UTC (Keel: UTC either way; see `start`).
    #[serde(default)]
    pub localtime: bool,
    /// Gzip rotated files (refused: see `start`).
    #[serde(default)]
    pub compress: bool,
}

fn default_max_size() -> u64 {
    100
}

impl Rotation {
    /// etcd's --log-rotation-config-json.
    pub fn parse(json: &str) -> Result<Rotation, String> {
        serde_json::from_str(json).map_err(|e| format!("invalid log rotation config: {e}"))
    }
}

/// Installs the global subscriber; etcd's error message when the outputs cannot be opened.
pub fn start(cfg: &LogConfig) -> Result<(), String> {
    let level = match cfg.level.as_str() {
        "panic" | "fatal" => "error",
        other => other,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let outputs = Outputs::open(&cfg.outputs, cfg.rotation.as_ref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(outputs);
    let style = match (cfg.logger.as_str(), cfg.format.as_str()) {
        ("capnslog", _) => Style::Capnslog,
        (_, "console") => Style::Console,
        _ => Style::ZapJson,
    };
    builder
        .event_format(EtcdFormat { style })
        .try_init()
        .map_err(|e| e.to_string())
}

#[derive(Clone, Copy)]
enum Style {
    ZapJson,
    Console,
    Capnslog,
}

struct EtcdFormat {
    style: Style,
}

impl<S, N> FormatEvent<S, N> for EtcdFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let now = SystemTime::now();
        match self.style {
            Style::ZapJson => {
                let mut line = serde_json::Map::new();
                line.insert("level".into(), zap_level(*meta.level()).into());
                line.insert(
                    "ts".into(),
                    humantime::format_rfc3339_millis(now).to_string().into(),
                );
                line.insert("caller".into(), caller(meta).into());
                line.insert("msg".into(), fields.message.into());
                for (k, v) in fields.rest {
                    line.insert(k, v);
                }
                writeln!(w, "{}", serde_json::Value::Object(line))
            }
            Style::Console => {
                write!(
                    w,
                    "{}\t{}\t{}\t{}",
                    humantime::format_rfc3339_millis(now),
                    zap_level(*meta.level()),
                    caller(meta),
                    fields.message
                )?;
                if !fields.rest.is_empty() {
                    write!(w, "\t{}", serde_json::Value::Object(fields.rest))?;
                }
                writeln!(w)
            }
            Style::Capnslog => {
                let ts = humantime::format_rfc3339_micros(now).to_string();
                let ts = ts.trim_end_matches('Z').replacen('T', " ", 1);
                let package = meta.target().split("::").last().unwrap_or("keel");
                write!(
                    w,
                    "{ts} {} | {package}: {}",
                    capnslog_level(*meta.level()),
                    fields.message
                )?;
                for (k, v) in &fields.rest {
                    match v {
                        serde_json::Value::String(s) => write!(w, " {k}={s}")?,
                        other => write!(w, " {k}={other}")?,
                    }
                }
                writeln!(w)
            }
        }
    }
}

fn zap_level(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "debug",
    }
}

fn capnslog_level(level: Level) -> char {
    match level {
        Level::ERROR => 'E',
        Level::WARN => 'W',
        Level::INFO => 'I',
        Level::DEBUG | Level::TRACE => 'D',
    }
}

/// zap's caller (`package/file.rs:line`), from the event's source location.
fn caller(meta: &tracing::Metadata<'_>) -> String {
    let file = meta.file().unwrap_or("?");
    let short = file
        .rsplit('/')
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("/");
    format!("{short}:{}", meta.line().unwrap_or(0))
}

/// An event's message and its other fields.
#[derive(Default)]
struct Fields {
    message: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.insert(field.name().into(), value.into());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.rest.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.rest.insert(field.name().into(), text.into());
        }
    }
}

/// Where log lines go.
#[derive(Clone)]
struct Outputs {
    sinks: Arc<Vec<Sink>>,
}

enum Sink {
    Stderr,
    Stdout,
    Journal(std::os::unix::net::UnixDatagram),
    File(Mutex<LogFile>),
}

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

impl Outputs {
    fn open(targets: &[String], rotation: Option<&Rotation>) -> Result<Outputs, String> {
        let files = targets
            .iter()
            .filter(|t| {
                !matches!(
                    t.as_str(),
                    "default" | "stderr" | "stdout" | "systemd/journal"
                )
            })
            .count();
        if rotation.is_some() && (files != 1 || targets.len() != 1) {
            return Err(
                "--enable-log-rotation needs exactly one --log-outputs target, a file".into(),
            );
        }
        if rotation.is_some_and(|r| r.compress) {
            return Err("--log-rotation-config-json: compress is not supported by keel".into());
        }
        let mut sinks = Vec::new();
        for target in targets {
            let sink = match target.as_str() {
                "default" | "stderr" => Sink::Stderr,
                "stdout" => Sink::Stdout,
                "systemd/journal" => {
                    let socket = std::os::unix::net::UnixDatagram::unbound()
                        .and_then(|s| s.connect(JOURNAL_SOCKET).map(|_| s))
                        .map_err(|e| format!("cannot find journal ({JOURNAL_SOCKET}: {e})"))?;
                    Sink::Journal(socket)
                }
                path => Sink::File(Mutex::new(LogFile::open(
                    PathBuf::from(path),
                    rotation.cloned(),
                )?)),
            };
            sinks.push(sink);
        }
        Ok(Outputs {
            sinks: Arc::new(sinks),
        })
    }
}

impl<'a> MakeWriter<'a> for Outputs {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            sinks: self.sinks.clone(),
            priority: 6,
            line: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        // syslog priorities, as journald files them.
        let priority = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        LineWriter {
            sinks: self.sinks.clone(),
            priority,
            line: Vec::new(),
        }
    }
}

/// Collects one formatted event and writes it whole to every output when dropped.
pub struct LineWriter {
    sinks: Arc<Vec<Sink>>,
    priority: u8,
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        for sink in self.sinks.iter() {
            // A log that cannot be written has nowhere to report it.
            let _ = match sink {
                Sink::Stderr => std::io::stderr().lock().write_all(&self.line),
                Sink::Stdout => std::io::stdout().lock().write_all(&self.line),
                Sink::Journal(socket) => socket
                    .send(&journal_entry(self.priority, &self.line))
                    .map(|_| ()),
                Sink::File(f) => f.lock().write_line(&self.line),
            };
        }
    }
}

/// A journald native-protocol entry: the line as MESSAGE, with its priority.
fn journal_entry(priority: u8, line: &[u8]) -> Vec<u8> {
    let message = line.strip_suffix(b"\n").unwrap_or(line);
    let mut entry = format!("PRIORITY={priority}\nSYSLOG_IDENTIFIER=keel\n").into_bytes();
    if message.contains(&b'\n') {
        // Multi-line values are sent length-prefixed.
        entry.extend_from_slice(b"MESSAGE\n");
        entry.extend_from_slice(&(message.len() as u64).to_le_bytes());
        entry.extend_from_slice(message);
        entry.push(b'\n');
    } else {
        entry.extend_from_slice(b"MESSAGE=");
        entry.extend_from_slice(message);
        entry.push(b'\n');
    }
    entry
}

/// A log file, rotated as lumberjack rotates etcd's: past `maxsize` MB the file is renamed to
/// `name-2006-01-02T15-04-05.000.ext` (UTC) and a new one started; old ones beyond
/// `maxbackups` or `maxage` days are removed.
struct LogFile {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    rotation: Option<Rotation>,
}

impl LogFile {
    fn open(path: PathBuf, rotation: Option<Rotation>) -> Result<LogFile, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open log output {}: {e}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogFile {
            path,
            file,
            size,
            rotation,
        })
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if let Some(r) = &self.rotation {
            if self.size > 0 && self.size + line.len() as u64 > r.maxsize.max(1) * 1024 * 1024 {
                self.rotate()?;
            }
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let stamp = humantime::format_rfc3339_millis(SystemTime::now())
            .to_string()
            .trim_end_matches('Z')
            .replace(':', "-");
        let backup = backup_name(&self.path, &stamp);
        std::fs::rename(&self.path, &backup)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        if let Some(r) = &self.rotation {
            prune_backups(&self.path, r);
        }
        Ok(())
    }
}

/// `dir/name-<stamp>.ext` for `dir/name.ext`.
fn backup_name(path: &Path, stamp: &str) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("log");
    let name = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}-{stamp}.{ext}"),
        None => format!("{stem}-{stamp}"),
    };
    path.with_file_name(name)
}

/// Removes rotated files beyond `maxbackups` (newest kept) and older than `maxage` days.
fn prune_backups(path: &Path, r: &Rotation) {
    let Some(dir) = path.parent() else { return };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("log");
    let prefix = format!("{stem}-");
    let mut backups: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    backups.sort_by_key(|b| std::cmp::Reverse(b.0));
    let max_age = Duration::from_secs(r.maxage * 24 * 3600);
    for (i, (modified, p)) in backups.iter().enumerate() {
        let too_many = r.maxbackups > 0 && i >= r.maxbackups;
        let too_old = r.maxage > 0 && modified.elapsed().is_ok_and(|age| age > max_age);
        if too_many || too_old {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_config_reads_etcds_json() {
        let r = Rotation::parse(
            r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#,
        )
        .unwrap();
        assert_eq!(r.maxsize, 100);
        assert!(Rotation::parse("{nope").is_err());
    }

    #[test]
    fn a_full_log_file_rotates_and_old_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.log");
        let rotation = Rotation {
            maxsize: 1,
            maxbackups: 1,
            ..Default::default()
        };
        let mut f = LogFile::open(path.clone(), Some(rotation)).unwrap();
        let line = vec![b'x'; 400 * 1024];
        for _ in 0..8 {
            f.write_line(&line).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"etcd.log".to_string()), "{names:?}");
        assert_eq!(names.len(), 2, "one backup kept: {names:?}");
        assert!(std::fs::metadata(&path).unwrap().len() <= 1024 * 1024);
    }

    #[test]
    fn journal_entries_carry_priority_and_message() {
        let e = journal_entry(4, b"hello\n");
        assert_eq!(e, b"PRIORITY=4\nSYSLOG_IDENTIFIER=keel\nMESSAGE=hello\n");
    }
}
