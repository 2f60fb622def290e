-- A session store written by Koe's code before Alembic (main at b57433e, koe/store.py's own schema),
-- dumped with sqlite3's iterdump: three conversations (one ended by the user, one by a limit on the
-- local backend, one left open), their events, transcript rows and usage. What that code read back is
-- in store-0001.json (times as epoch seconds only: the tables' local times depend on the time zone).
BEGIN TRANSACTION;
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    end_reason TEXT,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    dialect TEXT NOT NULL,
    settings TEXT NOT NULL,
    visitor TEXT,
    title TEXT,
    version INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "conversations" VALUES('conv_11TqDoStXfDyzACIWdpN',1.7959932384635298252e+09,1.7959932384732422829e+09,'stopped by the user','openai','gpt-realtime','ga','{"voice": "marin", "api_key": "[redacted]"}','v_1','Morning chat',1);
INSERT INTO "conversations" VALUES('conv_JIBCiTLyKGftV10CPnDg',1.79599323847363400458e+09,1.79599323847714900971e+09,'the session reached its 10-minute limit','local','gpt-realtime','beta','{"voice": "alloy"}','v_2',NULL,1);
INSERT INTO "conversations" VALUES('conv_nZI5nwW33pzO1r2OAnGo',1.79599323847743034361e+09,NULL,NULL,'openai','gpt-realtime-mini','ga','{}','v_1',NULL,1);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    at REAL NOT NULL,
    direction TEXT NOT NULL,
    type TEXT NOT NULL,
    event_id TEXT,
    payload TEXT NOT NULL
);
INSERT INTO "events" VALUES(1,'conv_11TqDoStXfDyzACIWdpN',1700000000.0,'server','input_audio_buffer.speech_started','event_fWO4uWXw65VhOigNwPvJ','{"type":"input_audio_buffer.speech_started","event_id":"event_fWO4uWXw65VhOigNwPvJ","audio_start_ms":0,"item_id":"item_U1"}');
INSERT INTO "events" VALUES(2,'conv_11TqDoStXfDyzACIWdpN',1700000001.0,'server','input_audio_buffer.speech_stopped','event_5t2rjQjS8RyB3yqiHqdV','{"type":"input_audio_buffer.speech_stopped","event_id":"event_5t2rjQjS8RyB3yqiHqdV","audio_end_ms":1000,"item_id":"item_U1"}');
INSERT INTO "events" VALUES(3,'conv_11TqDoStXfDyzACIWdpN',1700000001.1,'server','input_audio_buffer.committed','event_cff3GePtRb6wnXI2pdGP','{"type":"input_audio_buffer.committed","event_id":"event_cff3GePtRb6wnXI2pdGP","item_id":"item_U1","previous_item_id":null}');
INSERT INTO "events" VALUES(4,'conv_11TqDoStXfDyzACIWdpN',1700000001.1,'server','conversation.item.added','event_QPRUML9d7K2dbG68hJx4','{"type":"conversation.item.added","event_id":"event_QPRUML9d7K2dbG68hJx4","item":{"id":"item_U1","object":"realtime.item","type":"message","status":"completed","role":"user","content":[{"type":"input_audio","transcript":null}]},"previous_item_id":null}');
INSERT INTO "events" VALUES(5,'conv_11TqDoStXfDyzACIWdpN',1700000001.1,'server','conversation.item.done','event_tI8oOMSdDunfWy2JPb4P','{"type":"conversation.item.done","event_id":"event_tI8oOMSdDunfWy2JPb4P","item":{"id":"item_U1","object":"realtime.item","type":"message","status":"completed","role":"user","content":[{"type":"input_audio","transcript":null}]},"previous_item_id":null}');
INSERT INTO "events" VALUES(6,'conv_11TqDoStXfDyzACIWdpN',1700000001.2,'server','response.created','event_GFVn8nya0X342DpcqGN9','{"type":"response.created","event_id":"event_GFVn8nya0X342DpcqGN9","response":{"id":"resp_1","status":"in_progress","output":[]}}');
INSERT INTO "events" VALUES(7,'conv_11TqDoStXfDyzACIWdpN',1700000001.3,'server','response.output_item.added','event_FEsDGmOZGTTvr5T0aDmU','{"type":"response.output_item.added","event_id":"event_FEsDGmOZGTTvr5T0aDmU","response_id":"resp_1","output_index":0,"item":{"id":"item_A1","object":"realtime.item","type":"message","status":"in_progress","role":"assistant","content":[]}}');
INSERT INTO "events" VALUES(8,'conv_11TqDoStXfDyzACIWdpN',1700000001.3,'server','conversation.item.added','event_xfrVKm0eqR4L1OePSzB9','{"type":"conversation.item.added","event_id":"event_xfrVKm0eqR4L1OePSzB9","item":{"id":"item_A1","object":"realtime.item","type":"message","status":"in_progress","role":"assistant","content":[]},"previous_item_id":"item_U1"}');
INSERT INTO "events" VALUES(9,'conv_11TqDoStXfDyzACIWdpN',1700000001.8,'server','output_audio_buffer.started','event_pyFoKNS7gvGMSRtJhRCL','{"type":"output_audio_buffer.started","event_id":"event_pyFoKNS7gvGMSRtJhRCL","response_id":"resp_1"}');
INSERT INTO "events" VALUES(10,'conv_11TqDoStXfDyzACIWdpN',1700000001.9,'server','response.output_audio_transcript.delta','event_G6XwYcsm2N0czV6s3XGY','{"type":"response.output_audio_transcript.delta","event_id":"event_G6XwYcsm2N0czV6s3XGY","delta":"Hello","response_id":"resp_1","item_id":"item_A1","output_index":0,"content_index":0}');
INSERT INTO "events" VALUES(11,'conv_11TqDoStXfDyzACIWdpN',1700000002.0,'server','response.output_audio_transcript.delta','event_a3P495KF4TUipRJycx3S','{"type":"response.output_audio_transcript.delta","event_id":"event_a3P495KF4TUipRJycx3S","delta":" there","response_id":"resp_1","item_id":"item_A1","output_index":0,"content_index":0}');
INSERT INTO "events" VALUES(12,'conv_11TqDoStXfDyzACIWdpN',1700000002.2,'client','response.cancel','event_c1','{"type":"response.cancel","event_id":"event_c1"}');
INSERT INTO "events" VALUES(13,'conv_11TqDoStXfDyzACIWdpN',1700000002.3,'server','conversation.item.input_audio_transcription.delta','event_9UPxAfUuWPUxqMXmS8HA','{"type":"conversation.item.input_audio_transcription.delta","event_id":"event_9UPxAfUuWPUxqMXmS8HA","item_id":"item_U1","content_index":0,"delta":"Go"}');
INSERT INTO "events" VALUES(14,'conv_11TqDoStXfDyzACIWdpN',1.700000002399999857e+09,'server','conversation.item.input_audio_transcription.completed','event_p8crXV5jkYRmGREzLLnv','{"type":"conversation.item.input_audio_transcription.completed","event_id":"event_p8crXV5jkYRmGREzLLnv","item_id":"item_U1","content_index":0,"transcript":"Good morning, KYŌTO"}');
INSERT INTO "events" VALUES(15,'conv_11TqDoStXfDyzACIWdpN',1700000003.0,'server','response.output_audio_transcript.done','event_WalHScRl0jarvaxZFUgm','{"type":"response.output_audio_transcript.done","event_id":"event_WalHScRl0jarvaxZFUgm","transcript":"Hello there.","response_id":"resp_1","item_id":"item_A1","output_index":0,"content_index":0}');
INSERT INTO "events" VALUES(16,'conv_11TqDoStXfDyzACIWdpN',1700000003.0,'server','conversation.item.done','event_Sp2M9KpctlB7Zxw3lwB3','{"type":"conversation.item.done","event_id":"event_Sp2M9KpctlB7Zxw3lwB3","item":{"id":"item_A1","object":"realtime.item","type":"message","status":"completed","role":"assistant","content":[{"type":"output_audio","transcript":"Hello there."}]}}');
INSERT INTO "events" VALUES(17,'conv_11TqDoStXfDyzACIWdpN',1700000003.1,'server','response.done','event_2QxdUlLFP6iX8WinTHe7','{"type":"response.done","event_id":"event_2QxdUlLFP6iX8WinTHe7","response":{"id":"resp_1","status":"completed","output":[{"id":"item_A1","object":"realtime.item","type":"message","status":"completed","role":"assistant","content":[{"type":"output_audio","transcript":"Hello there."}]}],"usage":{"total_tokens":1900,"input_tokens":1500,"output_tokens":400,"input_token_details":{"text_tokens":1000,"audio_tokens":500,"image_tokens":0,"cached_tokens":200,"cached_tokens_details":{"text_tokens":200,"audio_tokens":0}},"output_token_details":{"text_tokens":100,"audio_tokens":300}}}}');
INSERT INTO "events" VALUES(18,'conv_JIBCiTLyKGftV10CPnDg',1700000100.0,'server','input_audio_buffer.speech_started','event_kK2U0Fc70R0ftM6R3XdL','{"type":"input_audio_buffer.speech_started","event_id":"event_kK2U0Fc70R0ftM6R3XdL","audio_start_ms":0,"item_id":"item_U2"}');
INSERT INTO "events" VALUES(19,'conv_JIBCiTLyKGftV10CPnDg',1700000101.0,'server','input_audio_buffer.speech_stopped','event_s2gP9SNhspRRGYBgoOtp','{"type":"input_audio_buffer.speech_stopped","event_id":"event_s2gP9SNhspRRGYBgoOtp","audio_end_ms":1000,"item_id":"item_U2"}');
INSERT INTO "events" VALUES(20,'conv_JIBCiTLyKGftV10CPnDg',1700000101.1,'server','input_audio_buffer.committed','event_WbnWEEeRfGfkqF1tgGFo','{"type":"input_audio_buffer.committed","event_id":"event_WbnWEEeRfGfkqF1tgGFo","item_id":"item_U2","previous_item_id":null}');
INSERT INTO "events" VALUES(21,'conv_JIBCiTLyKGftV10CPnDg',1700000101.1,'server','conversation.item.created','event_qkrj2HUYQwRtOUcpph6P','{"type":"conversation.item.created","event_id":"event_qkrj2HUYQwRtOUcpph6P","item":{"id":"item_U2","object":"realtime.item","type":"message","status":"completed","role":"user","content":[{"type":"input_audio","transcript":null}]},"previous_item_id":null}');
INSERT INTO "events" VALUES(22,'conv_JIBCiTLyKGftV10CPnDg',1700000101.2,'server','response.created','event_XyaW7JBXXjsBywRkyGmA','{"type":"response.created","event_id":"event_XyaW7JBXXjsBywRkyGmA","response":{"id":"resp_2","status":"in_progress","output":[]}}');
INSERT INTO "events" VALUES(23,'conv_JIBCiTLyKGftV10CPnDg',1700000101.3,'server','response.output_item.added','event_cES99wxB7xj2pHYkTJ4x','{"type":"response.output_item.added","event_id":"event_cES99wxB7xj2pHYkTJ4x","response_id":"resp_2","output_index":0,"item":{"id":"item_A2","object":"realtime.item","type":"message","status":"in_progress","role":"assistant","content":[]}}');
INSERT INTO "events" VALUES(24,'conv_JIBCiTLyKGftV10CPnDg',1700000101.3,'server','conversation.item.created','event_OcjCdxofGiHtadYGiwoP','{"type":"conversation.item.created","event_id":"event_OcjCdxofGiHtadYGiwoP","item":{"id":"item_A2","object":"realtime.item","type":"message","status":"in_progress","role":"assistant","content":[]},"previous_item_id":"item_U2"}');
INSERT INTO "events" VALUES(25,'conv_JIBCiTLyKGftV10CPnDg',1700000101.8,'server','output_audio_buffer.started','event_G7dp6budtwSiA5ZaVLab','{"type":"output_audio_buffer.started","event_id":"event_G7dp6budtwSiA5ZaVLab","response_id":"resp_2"}');
INSERT INTO "events" VALUES(26,'conv_JIBCiTLyKGftV10CPnDg',1700000101.9,'server','response.audio_transcript.delta','event_zjENzmcej0Lfnna5iAPk','{"type":"response.audio_transcript.delta","event_id":"event_zjENzmcej0Lfnna5iAPk","delta":"Hello","response_id":"resp_2","item_id":"item_A2","output_index":0,"content_index":0}');
INSERT INTO "events" VALUES(27,'conv_JIBCiTLyKGftV10CPnDg',1700000102.0,'server','response.audio_transcript.delta','event_PJ3f7iGlKeE9mduOVX0p','{"type":"response.audio_transcript.delta","event_id":"event_PJ3f7iGlKeE9mduOVX0p","delta":" there","response_id":"resp_2","item_id":"item_A2","output_index":0,"content_index":0}');
INSERT INTO "events" VALUES(28,'conv_JIBCiTLyKGftV10CPnDg',1700000102.0,'server','conversation.item.input_audio_transcription.delta','event_CHemHlmEO4ICEkZ99DhP','{"type":"conversation.item.input_audio_transcription.delta","event_id":"event_CHemHlmEO4ICEkZ99DhP","item_id":"item_U2","content_index":0,"delta":"Te"}');
INSERT INTO "events" VALUES(29,'conv_JIBCiTLyKGftV10CPnDg',1700000102.1,'server','conversation.item.input_audio_transcription.completed','event_8O0lN1OUzyWLbmutLQ0w','{"type":"conversation.item.input_audio_transcription.completed","event_id":"event_8O0lN1OUzyWLbmutLQ0w","item_id":"item_U2","content_index":0,"transcript":"Tell me a story"}');
INSERT INTO "events" VALUES(30,'conv_JIBCiTLyKGftV10CPnDg',1700000103.0,'server','conversation.item.truncated','event_CFmQyabumf3I9rZuGebn','{"type":"conversation.item.truncated","event_id":"event_CFmQyabumf3I9rZuGebn","item_id":"item_A2","content_index":0,"audio_end_ms":700}');
INSERT INTO "events" VALUES(31,'conv_JIBCiTLyKGftV10CPnDg',1700000103.0,'server','response.audio_transcript.done','event_u7f6LUZy9KHybKVJLL1n','{"type":"response.audio_transcript.done","event_id":"event_u7f6LUZy9KHybKVJLL1n","transcript":"Once upon","response_id":"resp_2","item_id":"item_A2","output_index":0,"content_index":0}');
INSERT INTO "events" VALUES(32,'conv_JIBCiTLyKGftV10CPnDg',1700000103.1,'server','response.done','event_6f221gxLObO5jXdpY2O4','{"type":"response.done","event_id":"event_6f221gxLObO5jXdpY2O4","response":{"id":"resp_2","status":"cancelled","output":[{"id":"item_A2","object":"realtime.item","type":"message","status":"completed","role":"assistant","content":[{"type":"output_audio","transcript":"Once upon"}]}],"usage":{"total_tokens":1900,"input_tokens":1500,"output_tokens":400,"input_token_details":{"text_tokens":1000,"audio_tokens":500,"image_tokens":0,"cached_tokens":200,"cached_tokens_details":{"text_tokens":200,"audio_tokens":0}},"output_token_details":{"text_tokens":100,"audio_tokens":300}}}}');
INSERT INTO "events" VALUES(33,'conv_nZI5nwW33pzO1r2OAnGo',1700000200.0,'server','input_audio_buffer.speech_started','event_qXXpUnINZ1A590vol7r2','{"type":"input_audio_buffer.speech_started","event_id":"event_qXXpUnINZ1A590vol7r2","audio_start_ms":0,"item_id":"item_U3"}');
INSERT INTO "events" VALUES(34,'conv_nZI5nwW33pzO1r2OAnGo',1700000201.0,'server','input_audio_buffer.speech_stopped','event_w1c5nrHi4BfFrIElvNSb','{"type":"input_audio_buffer.speech_stopped","event_id":"event_w1c5nrHi4BfFrIElvNSb","audio_end_ms":1000,"item_id":"item_U3"}');
INSERT INTO "events" VALUES(35,'conv_nZI5nwW33pzO1r2OAnGo',1700000201.1,'server','input_audio_buffer.committed','event_FkuS5boTQKkhpP32bNth','{"type":"input_audio_buffer.committed","event_id":"event_FkuS5boTQKkhpP32bNth","item_id":"item_U3","previous_item_id":null}');
INSERT INTO "events" VALUES(36,'conv_nZI5nwW33pzO1r2OAnGo',1700000201.1,'server','conversation.item.added','event_DVdqw6I9Au4Sn6R4XVQb','{"type":"conversation.item.added","event_id":"event_DVdqw6I9Au4Sn6R4XVQb","item":{"id":"item_U3","object":"realtime.item","type":"message","status":"completed","role":"user","content":[{"type":"input_audio","transcript":null}]},"previous_item_id":null}');
INSERT INTO "events" VALUES(37,'conv_nZI5nwW33pzO1r2OAnGo',1700000201.1,'server','conversation.item.done','event_GOi7Ub5Ms9Ax9uCF7wBW','{"type":"conversation.item.done","event_id":"event_GOi7Ub5Ms9Ax9uCF7wBW","item":{"id":"item_U3","object":"realtime.item","type":"message","status":"completed","role":"user","content":[{"type":"input_audio","transcript":null}]},"previous_item_id":null}');
INSERT INTO "events" VALUES(38,'conv_nZI5nwW33pzO1r2OAnGo',1700000201.2,'server','response.created','event_LSoJuNwxe4hhFiadQB50','{"type":"response.created","event_id":"event_LSoJuNwxe4hhFiadQB50","response":{"id":"resp_3","status":"in_progress","output":[]}}');
INSERT INTO "events" VALUES(39,'conv_nZI5nwW33pzO1r2OAnGo',1700000201.3,'server','response.output_item.added','event_eXrIS5Xm9BNSbTjHy5qZ','{"type":"response.output_item.added","event_id":"event_eXrIS5Xm9BNSbTjHy5qZ","response_id":"resp_3","output_index":0,"item":{"id":"item_A3","object":"realtime.item","type":"message","status":"in_progress","role":"assistant","content":[]}}');
INSERT INTO "events" VALUES(40,'conv_nZI5nwW33pzO1r2OAnGo',1700000201.3,'server','conversation.item.added','event_ixyxWgSzbdHqwSwDRN08','{"type":"conversation.item.added","event_id":"event_ixyxWgSzbdHqwSwDRN08","item":{"id":"item_A3","object":"realtime.item","type":"message","status":"in_progress","role":"assistant","content":[]},"previous_item_id":"item_U3"}');
INSERT INTO "events" VALUES(41,'conv_nZI5nwW33pzO1r2OAnGo',1700000201.8,'server','output_audio_buffer.started','event_dcvVymqP3imdl7nujK83','{"type":"output_audio_buffer.started","event_id":"event_dcvVymqP3imdl7nujK83","response_id":"resp_3"}');
INSERT INTO "events" VALUES(42,'conv_nZI5nwW33pzO1r2OAnGo',1700000201.9,'server','response.output_audio_transcript.delta','event_CuVnfSIlI9AhCn7V1Y7N','{"type":"response.output_audio_transcript.delta","event_id":"event_CuVnfSIlI9AhCn7V1Y7N","delta":"Hello","response_id":"resp_3","item_id":"item_A3","output_index":0,"content_index":0}');
INSERT INTO "events" VALUES(43,'conv_nZI5nwW33pzO1r2OAnGo',1700000202.0,'server','response.output_audio_transcript.delta','event_frS0AqMBOLqFxcuUUuHM','{"type":"response.output_audio_transcript.delta","event_id":"event_frS0AqMBOLqFxcuUUuHM","delta":" there","response_id":"resp_3","item_id":"item_A3","output_index":0,"content_index":0}');
CREATE TABLE items (
    conversation_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    previous_item_id TEXT,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    final INTEGER NOT NULL,
    interrupted INTEGER NOT NULL,
    at REAL NOT NULL,
    latency_ms INTEGER,
    position INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, item_id)
);
INSERT INTO "items" VALUES('conv_11TqDoStXfDyzACIWdpN','item_U1',NULL,'user','Good morning, KYŌTO',1,0,1700000001.1,NULL,0);
INSERT INTO "items" VALUES('conv_11TqDoStXfDyzACIWdpN','item_A1','item_U1','assistant','Hello there.',1,0,1700000001.3,640,1);
INSERT INTO "items" VALUES('conv_JIBCiTLyKGftV10CPnDg','item_U2',NULL,'user','Tell me a story',1,0,1700000101.1,NULL,0);
INSERT INTO "items" VALUES('conv_JIBCiTLyKGftV10CPnDg','item_A2','item_U2','assistant','Once upon',1,1,1700000101.3,800,1);
INSERT INTO "items" VALUES('conv_nZI5nwW33pzO1r2OAnGo','item_U3',NULL,'user','',0,0,1700000201.1,NULL,0);
INSERT INTO "items" VALUES('conv_nZI5nwW33pzO1r2OAnGo','item_A3','item_U3','assistant','Hello there',0,0,1700000201.3,800,1);
CREATE TABLE usage (
    conversation_id TEXT NOT NULL,
    response_id TEXT NOT NULL,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    input_text_tokens INTEGER NOT NULL,
    input_audio_tokens INTEGER NOT NULL,
    cached_text_tokens INTEGER NOT NULL,
    cached_audio_tokens INTEGER NOT NULL,
    output_text_tokens INTEGER NOT NULL,
    output_audio_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    PRIMARY KEY (conversation_id, response_id)
);
INSERT INTO "usage" VALUES('conv_11TqDoStXfDyzACIWdpN','resp_1',1700000003.1,'gpt-realtime',1000,500,200,0,100,300,0.04008);
INSERT INTO "usage" VALUES('conv_JIBCiTLyKGftV10CPnDg','resp_2',1700000103.1,'gpt-realtime',1000,500,200,0,100,300,0.0);
CREATE INDEX conversations_by_start ON conversations (started_at);
CREATE INDEX events_by_conversation ON events (conversation_id, id);
COMMIT;
