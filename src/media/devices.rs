//! The catalogue of media devices the user can pick: real cameras, microphones and speakers as
//! found, the system defaults, and synthetic sources (test pattern, tones) that work everywhere.
//! Each entry has a stable id (saved in settings) and a label for the UI.

use super::camera::CameraInfo;
use super::sound::SoundDevice;
use super::video::VideoSourceSpec;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceChoice {
    pub id: String,
    pub label: String,
}

fn choice(id: impl Into<String>, label: impl Into<String>) -> DeviceChoice {
    DeviceChoice {
        id: id.into(),
        label: label.into(),
    }
}

pub const NO_DEVICE: &str = "none";
pub const DEFAULT_DEVICE: &str = "default";

/// Real cameras first, then the test pattern at two sizes, then "no camera".
pub fn cameras(found: &[CameraInfo]) -> Vec<DeviceChoice> {
    let mut list: Vec<DeviceChoice> = found
        .iter()
        .map(|c| choice(format!("camera:{}", c.index), c.name.clone()))
        .collect();
    list.push(choice("test:640x480", "Test pattern (640x480)"));
    list.push(choice("test:1280x720", "Test pattern (1280x720)"));
    list.push(choice(NO_DEVICE, "No camera"));
    list
}

pub fn microphones(found: &[SoundDevice]) -> Vec<DeviceChoice> {
    let mut list = Vec::new();
    if !found.is_empty() {
        list.push(choice(DEFAULT_DEVICE, "System default microphone"));
    }
    list.extend(
        found
            .iter()
            .map(|d| choice(format!("sound:{}", d.id), d.name.clone())),
    );
    list.push(choice("tone:440", "Test tone (440 Hz)"));
    list.push(choice("tone:660", "Test tone (660 Hz)"));
    list.push(choice(NO_DEVICE, "No microphone"));
    list
}

pub fn speakers(found: &[SoundDevice]) -> Vec<DeviceChoice> {
    let mut list = Vec::new();
    if !found.is_empty() {
        list.push(choice(DEFAULT_DEVICE, "System default speaker"));
    }
    list.extend(
        found
            .iter()
            .map(|d| choice(format!("sound:{}", d.id), d.name.clone())),
    );
    list.push(choice("null", "No speaker (discard)"));
    list
}

/// The video source for a camera choice; `None` for "no camera", for nothing chosen yet (a
/// first run starts with the camera off until a real camera is found) and for an id we do not
/// know. The test pattern is only ever an explicit choice.
pub fn camera_spec(id: &str, found: &[CameraInfo], source_id: u8) -> Option<VideoSourceSpec> {
    if let Some(index) = id
        .strip_prefix("camera:")
        .and_then(|i| i.parse::<u32>().ok())
    {
        let name = found
            .iter()
            .find(|c| c.index == index)
            .map(|c| c.name.clone())
            .unwrap_or_else(|| format!("camera {index}"));
        return Some(VideoSourceSpec::Camera { index, name });
    }
    let (w, h) = match id {
        "test:1280x720" => (1280, 720),
        "test" | "test:640x480" => (640, 480),
        _ => return None,
    };
    Some(VideoSourceSpec::TestPattern {
        width: w,
        height: h,
        fps: 30,
        source_id,
    })
}

#[derive(Clone, Debug, PartialEq)]
pub enum MicChoice {
    None,
    Tone(f32),
    /// A real microphone; `None` is the system default.
    Device(Option<String>),
}

pub fn mic_choice(id: &str) -> MicChoice {
    match id {
        NO_DEVICE => MicChoice::None,
        DEFAULT_DEVICE | "" => MicChoice::Device(None),
        _ => {
            if let Some(hz) = id.strip_prefix("tone:").and_then(|h| h.parse::<f32>().ok()) {
                MicChoice::Tone(hz)
            } else if let Some(dev) = id.strip_prefix("sound:") {
                MicChoice::Device(Some(dev.to_owned()))
            } else {
                MicChoice::Device(None)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum SpeakerChoice {
    Null,
    /// A real speaker; `None` is the system default.
    Device(Option<String>),
}

pub fn speaker_choice(id: &str) -> SpeakerChoice {
    match id {
        "null" => SpeakerChoice::Null,
        DEFAULT_DEVICE | "" => SpeakerChoice::Device(None),
        _ => match id.strip_prefix("sound:") {
            Some(dev) => SpeakerChoice::Device(Some(dev.to_owned())),
            None => SpeakerChoice::Device(None),
        },
    }
}

/// The label of a device id in a list, or the id itself.
pub fn label_of(list: &[DeviceChoice], id: &str) -> String {
    list.iter()
        .find(|c| c.id == id)
        .map(|c| c.label.clone())
        .unwrap_or_else(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_map_to_sources() {
        let cams = [CameraInfo {
            index: 2,
            name: "Integrated Webcam".into(),
        }];
        let list = cameras(&cams);
        assert_eq!(list[0].id, "camera:2");
        assert_eq!(
            camera_spec("camera:2", &cams, 0),
            Some(VideoSourceSpec::Camera {
                index: 2,
                name: "Integrated Webcam".into()
            })
        );
        assert_eq!(camera_spec(NO_DEVICE, &cams, 0), None);
        assert!(matches!(
            camera_spec("test:1280x720", &[], 3),
            Some(VideoSourceSpec::TestPattern { width: 1280, .. })
        ));
        // A first run (nothing chosen) or a forgotten id starts with the camera off, never
        // with the test pattern standing in for the user.
        assert_eq!(camera_spec("", &[], 0), None);
        assert_eq!(camera_spec("webcam-from-another-machine", &cams, 0), None);
        assert!(matches!(
            camera_spec("test:640x480", &[], 3),
            Some(VideoSourceSpec::TestPattern { width: 640, .. })
        ));
        // No camera: the list still has the synthetic ones and "No camera".
        assert_eq!(cameras(&[]).last().unwrap().label, "No camera");
        assert_eq!(mic_choice("tone:660"), MicChoice::Tone(660.0));
        assert_eq!(
            mic_choice("sound:pulseaudio:mic"),
            MicChoice::Device(Some("pulseaudio:mic".into()))
        );
        assert_eq!(mic_choice(""), MicChoice::Device(None));
        assert_eq!(speaker_choice("null"), SpeakerChoice::Null);
        assert!(microphones(&[]).iter().all(|c| c.id != DEFAULT_DEVICE));
    }
}
