//! A log file's size cap and the rotated files it keeps: one setting and one validation for the
//! divergence log (`[migration] divergence_log_*`) and the dead-letter log (`[delivery]
//! dead_letter_*`).

use serde::Serialize;

use super::secret::nonzero;
use super::ConfigError;

/// The smallest cap accepted: a file must hold at least a few lines.
pub const MIN_BYTES: u64 = 4096;
/// The most rotated files kept.
pub const MAX_FILES: u64 = 100;

/// A log file's size cap and rotated files kept (`<file>.1` the newest … `<file>.<files>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rotation {
    pub max_bytes: u64,
    pub files: u32,
}

/// Validates `<prefix>_max_bytes` (at least [`MIN_BYTES`]) and `<prefix>_files` (1 to
/// [`MAX_FILES`]), naming the key at fault.
pub fn validate(prefix: &str, max_bytes: u64, files: u64) -> Result<Rotation, ConfigError> {
    if max_bytes < MIN_BYTES {
        return Err(ConfigError::new(
            format!("{prefix}_max_bytes"),
            format!("must be at least {MIN_BYTES}"),
        ));
    }
    let files_key = format!("{prefix}_files");
    let files = nonzero(&files_key, files)?;
    let files = u32::try_from(files)
        .ok()
        .filter(|f| u64::from(*f) <= MAX_FILES)
        .ok_or_else(|| ConfigError::new(&files_key, format!("must be {MAX_FILES} or less")))?;
    Ok(Rotation { max_bytes, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_by_key() {
        assert_eq!(
            validate("delivery.dead_letter", 4096, 1).unwrap(),
            Rotation {
                max_bytes: 4096,
                files: 1
            }
        );
        let e = validate("delivery.dead_letter", 10, 1).unwrap_err();
        assert_eq!(e.key, "delivery.dead_letter_max_bytes");
        let e = validate("delivery.dead_letter", 4096, 0).unwrap_err();
        assert_eq!(e.key, "delivery.dead_letter_files");
        let e = validate("delivery.dead_letter", 4096, 101).unwrap_err();
        assert_eq!(e.key, "delivery.dead_letter_files");
    }
}
