//! streamtract: real-time inference on Kafka streams.
