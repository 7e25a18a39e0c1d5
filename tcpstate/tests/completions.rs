//! `tcpstate completions SHELL`: each script loads in its shell and completes for real. The
//! shells come from `cargo xtask test`'s set-up; elsewhere a missing shell is skipped with a
//! message, in CI (`CI=true`) it fails.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");

fn script(shell: &str) -> String {
    let out = Command::new(BIN)
        .args(["completions", shell])
        .output()
        .expect("run tcpstate completions");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 script")
}

/// Runs `code` in `shell` with the script in a file; None when the shell is not installed.
fn run_in(shell: &str, args: &[&str], script: &str, code: &str) -> Option<(bool, String, String)> {
    let dir = std::env::temp_dir().join(format!("tcpstate-compl-{shell}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("tcpstate.completion");
    std::fs::write(&file, script).expect("write script");
    let code = code.replace("SCRIPT", &file.display().to_string());
    let out = match Command::new(shell)
        .args(args)
        .arg(&code)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_dir_all(&dir);
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{shell} is not installed in CI: `cargo xtask test` installs it"
            );
            eprintln!("skipped: {shell} is not installed (`cargo xtask test` installs it)");
            return None;
        }
        Err(e) => panic!("running {shell}: {e}"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let code = r#"
        source SCRIPT
        complete -p tcpstate >/dev/null || exit 3
        COMP_WORDS=(tcpstate tr); COMP_CWORD=1; COMP_LINE="tcpstate tr"; COMP_POINT=${#COMP_LINE}
        _tcpstate tcpstate tr tcpstate
        echo "sub: ${COMPREPLY[*]}"
        COMP_WORDS=(tcpstate trace --po); COMP_CWORD=2; COMP_LINE="tcpstate trace --po"
        COMP_POINT=${#COMP_LINE}
        _tcpstate tcpstate --po trace
        echo "flag: ${COMPREPLY[*]}"
    "#;
    let Some((ok, out, err)) = run_in("bash", &["--norc", "-c"], &script("bash"), code) else {
        return;
    };
    assert!(ok, "{err}");
    assert!(out.contains("sub: trace"), "{out}{err}");
    assert!(out.contains("flag: --port"), "{out}{err}");
}

#[test]
fn zsh_loads_and_registers_the_completion() {
    let code = r#"
        autoload -U compinit && compinit -u -D
        source SCRIPT
        print -r -- "registered: ${_comps[tcpstate]}"
    "#;
    let Some((ok, out, err)) = run_in("zsh", &["-f", "-c"], &script("zsh"), code) else {
        return;
    };
    assert!(ok, "{err}");
    assert!(err.trim().is_empty(), "zsh complained: {err}");
    assert!(out.contains("registered: _tcpstate"), "{out}{err}");
}

#[test]
fn fish_completes_subcommands() {
    let code = r#"source SCRIPT; complete -C "tcpstate tr"; complete -C "tcpstate trace --po""#;
    let Some((ok, out, err)) = run_in("fish", &["--no-config", "-c"], &script("fish"), code) else {
        return;
    };
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("trace")), "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with("--port")), "{out}{err}");
}

#[test]
fn an_unknown_shell_is_one_clear_error() {
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .expect("run tcpstate completions");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
}
