//! Desktop notifications reach a real notification service: a private D-Bus session bus
//! (`dbus-daemon`) with a stand-in for the desktop's notification daemon served by zbus, and
//! the app's `Notifier` talking to it through notify-rust as it does on a desktop. The inner
//! test runs in its own process so the bus address in its environment is the private one.

mod common;

use common::run_inner_test;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use huddle::services::Notifier;

struct Bus(Child);

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_notification_reaches_the_desktop_notification_service() {
    let mut daemon = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon is installed (scripts/setup --test installs it)");
    let mut address = String::new();
    BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut address)
        .unwrap();
    let _bus = Bus(daemon);
    let address = address.trim();
    assert!(!address.is_empty(), "dbus-daemon printed no address");
    run_inner_test(
        "inner_notification",
        &[("DBUS_SESSION_BUS_ADDRESS", address.as_ref())],
    );
}

/// What the stand-in daemon received: app name, icon, summary, body.
type Shown = (String, String, String, String);

struct StandInDaemon {
    shown: mpsc::SyncSender<Shown>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl StandInDaemon {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        _replaces_id: u32,
        app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        _hints: std::collections::HashMap<String, zbus::zvariant::OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let _ = self.shown.try_send((app_name, app_icon, summary, body));
        1
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "stand-in".into(),
            "huddle tests".into(),
            "1".into(),
            "1.2".into(),
        )
    }

    fn close_notification(&self, _id: u32) {}
}

#[test]
#[ignore = "run by a_notification_reaches_the_desktop_notification_service"]
fn inner_notification() {
    let address = std::env::var("DBUS_SESSION_BUS_ADDRESS").expect("a private bus");
    let (shown, received) = mpsc::sync_channel(8);
    let _daemon = zbus::blocking::connection::Builder::address(address.as_str())
        .unwrap()
        .name("org.freedesktop.Notifications")
        .unwrap()
        .serve_at("/org/freedesktop/Notifications", StandInDaemon { shown })
        .unwrap()
        .build()
        .unwrap();
    let notifier = Notifier::desktop();
    notifier.notify("bob in standup", "are you there?");
    let got = received
        .recv_timeout(Duration::from_secs(10))
        .expect("the notification reached the daemon");
    assert_eq!(
        got,
        (
            "Huddle".into(),
            "huddle".into(),
            "bob in standup".into(),
            "are you there?".into()
        )
    );
}
