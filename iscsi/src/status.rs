//! Status codes that travel on the wire: the Login Response's
//! Status-Class/Detail (RFC 7143 §11.13.5).

/// Status-Class and Status-Detail of a Login Response (RFC 7143 §11.13.5),
/// as `class << 8 | detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LoginStatus(pub u16);

impl LoginStatus {
    pub const SUCCESS: LoginStatus = LoginStatus(0x0000);
    /// The target moved temporarily; TargetAddress says where.
    pub const TARGET_MOVED_TEMPORARILY: LoginStatus = LoginStatus(0x0101);
    /// The target moved permanently; TargetAddress says where.
    pub const TARGET_MOVED_PERMANENTLY: LoginStatus = LoginStatus(0x0102);
    /// Miscellaneous initiator error.
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus(0x0200);
    /// The initiator could not be authenticated.
    pub const AUTHENTICATION_FAILURE: LoginStatus = LoginStatus(0x0201);
    /// The initiator may not access this target.
    pub const AUTHORIZATION_FAILURE: LoginStatus = LoginStatus(0x0202);
    /// No such target.
    pub const NOT_FOUND: LoginStatus = LoginStatus(0x0203);
    /// The target was removed.
    pub const TARGET_REMOVED: LoginStatus = LoginStatus(0x0204);
    /// No common protocol version.
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus(0x0205);
    /// Too many connections in the session.
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus(0x0206);
    /// A required parameter is missing.
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus(0x0207);
    /// The connection cannot join this session.
    pub const CANT_INCLUDE_IN_SESSION: LoginStatus = LoginStatus(0x0208);
    /// The session type is not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: LoginStatus = LoginStatus(0x0209);
    /// The TSIH names no existing session.
    pub const SESSION_DOES_NOT_EXIST: LoginStatus = LoginStatus(0x020a);
    /// A request other than Login Request during login.
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus(0x020b);
    /// Miscellaneous target error.
    pub const TARGET_ERROR: LoginStatus = LoginStatus(0x0300);
    /// The service is temporarily unavailable.
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus(0x0301);
    /// The target is out of resources.
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus(0x0302);

    pub fn class(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub fn detail(self) -> u8 {
        self.0 as u8
    }
    pub fn is_success(self) -> bool {
        self.class() == 0
    }
}
