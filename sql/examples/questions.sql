-- The two questions, answered from the rollups (fast on 100M rows: they read
-- one small row per region and datasource for each large file and one for
-- all compacted small files, not the trips).
-- Run: psql "$(tripload db url)" -f sql/examples/questions.sql

-- 1. From the two most commonly appearing regions, which is the latest datasource?
WITH region_totals AS (
    SELECT region_id, sum(trips) AS trips
    FROM rollup_region_source GROUP BY region_id
    ORDER BY trips DESC, region_id LIMIT 2
), latest AS (
    SELECT s.region_id, s.datasource_id, max(s.last_at) AS last_at
    FROM rollup_region_source s JOIN region_totals USING (region_id)
    GROUP BY 1, 2
)
SELECT d.name AS latest_datasource, r.name AS region, l.last_at
FROM latest l JOIN regions r ON r.id = l.region_id JOIN datasources d ON d.id = l.datasource_id
ORDER BY l.last_at DESC LIMIT 1;

-- 2. What regions has the cheap_mobile datasource appeared in?
SELECT r.name AS region
FROM rollup_region_source s
JOIN regions r ON r.id = s.region_id
JOIN datasources d ON d.id = s.datasource_id
WHERE d.name = 'cheap_mobile'
GROUP BY r.name
ORDER BY r.name;
