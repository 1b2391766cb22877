//! How a request ended badly: something to tell the client, or nothing more to say.

use pingora_error::Error;
use weir_filters::GatewayError;

/// How a request ended badly.
pub enum Failure {
    /// Tell the client, as OpenAI-shaped JSON.
    Client(GatewayError),
    /// Nothing more can be said (the answer already started or the client left):
    /// end the connection.
    Abort(Box<Error>),
}

impl From<GatewayError> for Failure {
    fn from(e: GatewayError) -> Self {
        Failure::Client(e)
    }
}
