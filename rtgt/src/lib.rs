//! rtgtd: event loops, backends, target table and management for rtgt.
