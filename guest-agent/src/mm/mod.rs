//! The guest's memory manager (placeholder until it lands).
