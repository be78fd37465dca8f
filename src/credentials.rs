//! Credentials from files, as the original's boto 2 found them.
//!
//! object_store reads the environment, web identity, ECS and the instance metadata, but not
//! the files an operator of the original may have put credentials in: the shared credentials
//! file of the AWS tools (`~/.aws/credentials`, profile `AWS_PROFILE`, else `default`) and
//! boto's own configuration (`BOTO_CONFIG`, else `/etc/boto.cfg` and `~/.boto`, section
//! `[Credentials]`). Without them, swapping binaries under an unchanged init script would
//! end in "no credentials". The order is boto's: flags and environment first (handled by the
//! caller), then these files, then the instance role.

use std::path::{Path, PathBuf};

/// Static credentials read from a file. `Debug` never shows the secret or token.
#[derive(Clone, PartialEq, Eq)]
pub struct FileCredentials {
    pub access_key: String,
    pub secret_key: String,
    pub token: Option<String>,
    /// Where they came from, for the log: `PATH [PROFILE]`.
    pub source: String,
}

impl std::fmt::Debug for FileCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCredentials")
            .field("access_key", &"<set>")
            .field("source", &self.source)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "profile {profile:?} (AWS_PROFILE) is not in {}: add it there or unset AWS_PROFILE",
        path.display()
    )]
    NoProfile { profile: String, path: PathBuf },
    #[error(
        "profile {profile:?} in {} has aws_access_key_id or aws_secret_access_key but not both",
        path.display()
    )]
    Incomplete { profile: String, path: PathBuf },
}

/// Looks for credentials in the files, reading the environment through `env` (a parameter so
/// tests need not change the process environment). `Ok(None)`: no file has any.
pub fn from_files(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<FileCredentials>, CredentialsError> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let home = var("HOME").map(PathBuf::from);
    // The AWS tools' shared file.
    let explicit = var("AWS_PROFILE").or_else(|| var("AWS_DEFAULT_PROFILE"));
    let profile = explicit.clone().unwrap_or_else(|| "default".into());
    let shared = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
    if let Some(path) = shared {
        if let Ok(text) = std::fs::read_to_string(&path) {
            match section(&text, &profile) {
                Some(kv) => {
                    let get = |k: &str| lookup(&kv, k);
                    return match (get("aws_access_key_id"), get("aws_secret_access_key")) {
                        (Some(access_key), Some(secret_key)) => Ok(Some(FileCredentials {
                            access_key,
                            secret_key,
                            token: get("aws_session_token").or_else(|| get("aws_security_token")),
                            source: format!("{} [{profile}]", path.display()),
                        })),
                        (None, None) if explicit.is_none() => Ok(None),
                        _ => Err(CredentialsError::Incomplete { profile, path }),
                    };
                }
                None if explicit.is_some() => {
                    return Err(CredentialsError::NoProfile { profile, path });
                }
                None => {}
            }
        }
    }
    // boto 2's configuration: BOTO_CONFIG alone, else /etc/boto.cfg then ~/.boto (the later
    // file wins, as boto reads them in that order).
    let boto: Vec<PathBuf> = match var("BOTO_CONFIG") {
        Some(p) => vec![PathBuf::from(p)],
        None => std::iter::once(PathBuf::from("/etc/boto.cfg"))
            .chain(home.as_ref().map(|h| h.join(".boto")))
            .collect(),
    };
    let mut found = None;
    for path in boto {
        if let Some(c) = boto_file(&path) {
            found = Some(c);
        }
    }
    Ok(found)
}

/// The files [`from_files`] reads, in its order, for messages: `PATH [PROFILE]` for the AWS
/// tools' file, then boto's.
pub fn searched_files(env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let home = var("HOME").map(PathBuf::from);
    let profile = var("AWS_PROFILE")
        .or_else(|| var("AWS_DEFAULT_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let shared = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
    let boto: Vec<PathBuf> = match var("BOTO_CONFIG") {
        Some(p) => vec![PathBuf::from(p)],
        None => std::iter::once(PathBuf::from("/etc/boto.cfg"))
            .chain(home.as_ref().map(|h| h.join(".boto")))
            .collect(),
    };
    shared
        .map(|p| format!("{} [{profile}]", p.display()))
        .into_iter()
        .chain(boto.iter().map(|p| p.display().to_string()))
        .collect()
}

/// Set when the AWS credential chain found nothing in flags, environment or files and
/// object_store will ask the instance metadata service: if that gives nothing either, the
/// error should say that no credentials were found anywhere (what was tried, what to set)
/// instead of quoting a refused request to a link-local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataFallback {
    /// The files that were read and held no credentials.
    pub files: Vec<String>,
    /// The metadata endpoint object_store asks, e.g. `http://169.254.169.254`.
    pub endpoint: String,
}

impl MetadataFallback {
    /// Whether an error (its whole chain as text) came from asking the metadata service.
    pub fn caused(&self, error_text: &str) -> bool {
        let host = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, rest)| rest)
            .trim_end_matches('/');
        !host.is_empty() && error_text.contains(host)
    }
}

fn boto_file(path: &Path) -> Option<FileCredentials> {
    let text = std::fs::read_to_string(path).ok()?;
    let kv = section(&text, "Credentials")?;
    Some(FileCredentials {
        access_key: lookup(&kv, "aws_access_key_id")?,
        secret_key: lookup(&kv, "aws_secret_access_key")?,
        token: lookup(&kv, "aws_security_token"),
        source: format!("{} [Credentials]", path.display()),
    })
}

/// The `key = value` pairs of `[name]` in an INI text (`;`/`#` comments; the AWS config
/// file's `[profile name]` spelling is accepted too).
fn section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut inside = false;
    let mut seen = false;
    let mut kv = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(head) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let head = head.trim();
            let head = head.strip_prefix("profile ").map(str::trim).unwrap_or(head);
            inside = head == name;
            seen |= inside;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) {
                kv.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
    }
    seen.then_some(kv)
}

fn lookup(kv: &[(String, String)], key: &str) -> Option<String> {
    kv.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const SHARED: &str = "\
# comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secret/default+x=

[backup]
aws_access_key_id=AKIDBACKUP
aws_secret_access_key=secretbackup
aws_session_token = tok

[half]
aws_access_key_id = AKIDHALF
";

    #[test]
    fn shared_file_profiles_and_boto_fallback() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(home.path().join(".aws/credentials"), SHARED).unwrap();
        let h = home.path().to_str().unwrap();

        let c = from_files(&env_of(&[("HOME", h)])).unwrap().unwrap();
        assert_eq!(
            (
                c.access_key.as_str(),
                c.secret_key.as_str(),
                c.token.as_deref()
            ),
            ("AKIDDEFAULT", "secret/default+x=", None)
        );
        assert!(
            c.source.ends_with(".aws/credentials [default]"),
            "{}",
            c.source
        );
        assert!(!format!("{c:?}").contains("secret"), "{c:?}");

        let c = from_files(&env_of(&[("HOME", h), ("AWS_PROFILE", "backup")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.access_key.as_str(), c.token.as_deref()),
            ("AKIDBACKUP", Some("tok"))
        );

        let e = from_files(&env_of(&[("HOME", h), ("AWS_PROFILE", "nope")])).unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
        let e = from_files(&env_of(&[("HOME", h), ("AWS_PROFILE", "half")])).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");

        // No shared file: boto's ~/.boto, and BOTO_CONFIG instead of it when set.
        std::fs::remove_file(home.path().join(".aws/credentials")).unwrap();
        assert_eq!(from_files(&env_of(&[("HOME", h)])).unwrap(), None);
        std::fs::write(
            home.path().join(".boto"),
            "[Boto]\ndebug = 0\n[Credentials]\naws_access_key_id: AKIDBOTO\naws_secret_access_key: botosecret\n",
        )
        .unwrap();
        let c = from_files(&env_of(&[("HOME", h)])).unwrap().unwrap();
        assert_eq!(
            (c.access_key.as_str(), c.secret_key.as_str()),
            ("AKIDBOTO", "botosecret")
        );
        let other = home.path().join("other.cfg");
        std::fs::write(
            &other,
            "[Credentials]\naws_access_key_id = AKIDOTHER\naws_secret_access_key = o\n",
        )
        .unwrap();
        let c = from_files(&env_of(&[
            ("HOME", h),
            ("BOTO_CONFIG", other.to_str().unwrap()),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.access_key, "AKIDOTHER");
        // Nothing anywhere (no HOME, as under some init systems).
        assert_eq!(
            from_files(&env_of(&[("BOTO_CONFIG", "/nonexistent")])).unwrap(),
            None
        );
    }

    #[test]
    fn searched_files_and_metadata_errors() {
        let files = searched_files(&env_of(&[("HOME", "/h"), ("AWS_PROFILE", "p")]));
        assert_eq!(
            files,
            ["/h/.aws/credentials [p]", "/etc/boto.cfg", "/h/.boto"]
        );
        let files = searched_files(&env_of(&[("BOTO_CONFIG", "/b.cfg")]));
        assert_eq!(files, ["/b.cfg"]);
        let m = MetadataFallback {
            files,
            endpoint: "http://127.0.0.1:9/".into(),
        };
        assert!(m.caused("error sending request for url (http://127.0.0.1:9/latest/api/token)"));
        assert!(!m.caused("error sending request for url (http://127.0.0.1:3900/bucket)"));
    }
}
