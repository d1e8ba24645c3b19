//! Images on an instance's daemon: is a reference there (and for which architecture), and a
//! pull of one (`crate::warm_images`).

use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;

use super::{DockerError, DockerHost};

/// A registry login for a pull (`Debug` never shows the password).
#[derive(Clone)]
pub struct PullLogin {
    /// The registry host the login is for (`127.0.0.1:5000`, `registry.example`).
    pub server: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for PullLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PullLogin {{ server: {:?}, username: {:?}, password: *** }}",
            self.server, self.username
        )
    }
}

impl DockerHost {
    /// The architecture (Docker's word: `amd64`, `arm64`) of the image `reference` names on
    /// this daemon; `Ok(None)` when the daemon has no image by that reference.
    pub async fn image_architecture(&self, reference: &str) -> Result<Option<String>, DockerError> {
        match self.api.inspect_image(reference).await {
            Ok(info) => Ok(Some(info.architecture.unwrap_or_default())),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(self.error(&e)),
        }
    }

    /// `docker pull --platform <platform> <reference>`: the reference must carry a tag or a
    /// digest (without one Docker pulls every tag). Done when the daemon's progress stream
    /// ends without an error.
    pub async fn pull_image(
        &self,
        reference: &str,
        platform: &str,
        login: Option<&PullLogin>,
    ) -> Result<(), DockerError> {
        let options = CreateImageOptions {
            from_image: Some(reference.to_string()),
            platform: platform.to_string(),
            ..Default::default()
        };
        let credentials = login.map(|l| DockerCredentials {
            username: Some(l.username.clone()),
            password: Some(l.password.clone()),
            serveraddress: Some(l.server.clone()),
            ..Default::default()
        });
        let mut stream = self.api.create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.error(&e))?;
            if let Some(message) = info.error_detail.and_then(|d| d.message) {
                return Err(DockerError::Api {
                    address: self.address.clone(),
                    message: message.trim().to_string(),
                });
            }
        }
        Ok(())
    }
}
