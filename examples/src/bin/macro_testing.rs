//! `TestApp`: run the registered handlers in a test on an in-memory backend, publish a typed value,
//! wait until everything settled, then check what was published, acked, nacked or poisoned.
//!
//! Run: `cargo run -p millstream-examples --bin macro_testing`, or its tests:
//! `cargo test -p millstream-examples --bin macro_testing`.

use millstream::prelude::*;
use millstream::testing::TestApp;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[millstream::topic("signups")]
struct SignedUp {
    email: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[millstream::topic("emails.welcome")]
struct WelcomeEmail {
    to: String,
}

#[millstream::handler]
async fn welcome(signup: SignedUp) -> Result<WelcomeEmail> {
    if !signup.email.contains('@') {
        return Err(Error::permanent(format!("not an email address: {}", signup.email)));
    }
    Ok(WelcomeEmail { to: signup.email })
}

async fn demo() -> millstream::Result<TestApp> {
    let app = TestApp::start(App::new().handler(welcome)).await?;
    app.publish(&SignedUp { email: "ada@example.com".into() }).await?;
    app.publish(&SignedUp { email: "nobody".into() }).await?;
    app.settled().await;
    Ok(app)
}

#[tokio::main]
async fn main() -> millstream::Result<()> {
    let app = demo().await?;
    println!("welcome emails: {:?}", app.published::<WelcomeEmail>());
    println!("acked: {}, poisoned: {}", app.acked(SignedUp::NAME).len(), app.poisoned().len());
    app.stop().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn welcomes_valid_signups_and_poisons_the_rest() {
        let app = demo().await.unwrap();
        assert_eq!(app.published::<WelcomeEmail>(), [WelcomeEmail { to: "ada@example.com".into() }]);
        assert_eq!(app.acked(SignedUp::NAME).len(), 2, "a poisoned message is acked too");
        let poisoned = app.poisoned();
        assert_eq!(poisoned.len(), 1);
        assert_eq!(&poisoned[0].payload()[..], br#"{"email":"nobody"}"#);
        app.stop().await.unwrap();
    }
}
