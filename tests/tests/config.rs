//! Bad configuration is rejected before anything is loaded: exit code 2 and a message that
//! names the file, the line and the field. These need no privileges.

use std::process::Command;

use sensor_e2e::{sensor::sensor_bin, unique};

fn run_with_config(text: &str, extra: &[&str]) -> (i32, String, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("{}.yaml", unique("se2e-bad-")));
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(sensor_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .args(extra)
        .output()
        .expect("run sensor");
    let _ = std::fs::remove_file(&path);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), path)
}

#[test]
fn unknown_field_names_file_line_and_field_and_exits_2() {
    let (code, stderr, path) =
        run_with_config("mode: detect\nnode_name: n1\nmetrics_adress: 1.2.3.4:1\n", &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("{}:3:", path.display())), "{stderr}");
    assert!(stderr.contains("metrics_adress"), "{stderr}");
}

#[test]
fn bad_value_names_file_line_and_field_and_exits_2() {
    let (code, stderr, path) = run_with_config("# sensor\nmode: enforce\nlog_format: yaml\n", &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("{}:3:", path.display())), "{stderr}");
    assert!(stderr.contains("log_format"), "{stderr}");
}

#[test]
fn malformed_yaml_is_rejected_with_its_line() {
    let (code, stderr, path) = run_with_config("mode: detect\ninterfaces: [veth*\n", &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
}

#[test]
fn missing_config_file_is_an_error() {
    let out = Command::new(sensor_bin())
        .args(["run", "--config", "/nonexistent/sensor.yaml"])
        .output()
        .expect("run sensor");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sensor.yaml"));
}

#[test]
fn bad_flag_exits_2_and_help_documents_flags() {
    let out = Command::new(sensor_bin()).args(["run", "--mode", "block"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let help = Command::new(sensor_bin()).args(["run", "--help"]).output().expect("help");
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in
        ["--mode", "--config", "--interfaces", "--metrics-addr", "--log-format", "--node-name"]
    {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}
