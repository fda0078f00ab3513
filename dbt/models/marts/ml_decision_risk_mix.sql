{# The mix of business decisions and risk levels per day, with each pair's share of the day. #}
{{ config(
    incremental_strategy='merge',
    unique_key=['prediction_day', 'business_decision', 'risk_level'],
    partition_by={'field': 'prediction_day', 'data_type': 'date', 'granularity': 'day'}
) }}
{%- set days = changed_days(ref('stg_predictions'), 'prediction_at', 'refreshed_at', 'refreshed_at') %}

with counted as (
    select
        date(prediction_at) as prediction_day,
        coalesce(business_decision, 'unknown') as business_decision,
        coalesce(risk_level, 'unknown') as risk_level,
        count(*) as predictions
    from {{ ref('stg_predictions') }}
    where {{ in_days('prediction_at', days) }}
    group by 1, 2, 3
)

select
    *,
    predictions / sum(predictions) over (partition by prediction_day) as share_of_day,
    current_timestamp() as refreshed_at
from counted
