//! Connects the command-line output flags to the pipeline and maps write errors.

use std::{collections::HashMap, fmt, io};

use crate::{clock::Start, cli::OutputArgs, event, input::Input};

#[derive(Debug)]
pub enum OutputError {
    /// The reader went away (`| head`): a normal way to stop.
    Closed,
    Io(io::Error),
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            OutputError::Closed
        } else {
            OutputError::Io(e)
        }
    }
}

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputError::Closed => write!(f, "output closed"),
            OutputError::Io(e) => write!(f, "writing output: {e}"),
        }
    }
}

impl std::error::Error for OutputError {}

pub struct Output {
    clock: Start,
    records: u64,
    last_ts: HashMap<u64, u64>,
}

impl Output {
    pub fn new(_args: &OutputArgs, clock: Start) -> Self {
        Output {
            clock,
            records: 0,
            last_ts: HashMap::new(),
        }
    }

    pub fn start(&mut self, out: &mut impl io::Write) -> Result<(), OutputError> {
        writeln!(
            out,
            "{:<7} {:<16} {:<26} {:<26} {:<27} {:>9}",
            "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "OLDSTATE -> NEWSTATE", "MS"
        )?;
        Ok(())
    }

    pub fn push(&mut self, input: &Input, out: &mut impl io::Write) -> Result<(), OutputError> {
        let Input::Event(ev) = input else {
            return Ok(());
        };
        let _ = self.clock;
        let ms = match self.last_ts.insert(ev.skaddr, ev.ts_ns) {
            Some(prev) if !event::starts_lifetime(ev) => ev.ts_ns.saturating_sub(prev) as f64 / 1e6,
            _ => 0.0,
        };
        if event::ends_lifetime(ev) {
            self.last_ts.remove(&ev.skaddr);
        }
        let pid = if ev.owner_pid == 0 { "-".to_string() } else { ev.owner_pid.to_string() };
        let comm = if ev.owner_pid == 0 { "-".into() } else { event::comm(&ev.owner_comm) };
        writeln!(
            out,
            "{:<7} {:<16} {:<26} {:<26} {:<27} {:>9.3}",
            pid,
            comm,
            format!("{}:{}", event::local_addr(ev), ev.sport),
            format!("{}:{}", event::remote_addr(ev), ev.dport),
            format!("{} -> {}", event::state_name(ev.oldstate), event::state_name(ev.newstate)),
            ms
        )?;
        self.records += 1;
        Ok(())
    }

    pub fn finish(&mut self, _out: &mut impl io::Write) -> Result<(), OutputError> {
        Ok(())
    }

    pub fn limit_reached(&self, count: Option<u64>) -> bool {
        count.is_some_and(|c| self.records >= c)
    }
}
